"""The bad-input cases of ``tests/test_cli_bad_inputs.py``: a row a case, ``(id, command line)``.

Add a row for a new bad input, and at least one for a new subcommand. A command line names the
prepared inputs as ``{placeholders}`` (the keys of that file's ``inputs`` fixture) and runs in an
empty working directory; it must exit 2 with one error line and write nothing.
"""

# (id, command line); an empty argument is written ''.
BACKDOOR = "poison backdoor --target-label star --data"  # then the data: the synthetic set's label
CASES = [
    # --- output paths (section 1): refused before any work
    ("synth-out-empty", "data synth ''"),
    ("synth-out-cwd", "data synth . --overwrite"),
    ("synth-out-parent", "data synth .. --overwrite"),
    ("synth-out-file", "data synth {file}"),
    ("synth-out-uncreatable", "data synth {file}/sub"),
    ("synth-out-user-dir", "data synth {userdir}"),
    ("synth-out-user-dir-overwrite", "data synth {userdir} --overwrite"),
    ("synth-out-previous-output", "data synth {data}"),
    ("synth-seed-negative", "data synth out --seed -1"),
    ("synth-image-size-0", "data synth out --image-size 0"),
    ("demo-out-user-dir", "demo --out {userdir} --overwrite"),
    ("demo-out-empty", "demo --out ''"),
    ("demo-device-banana", "demo --out out --device banana"),
    ("demo-target-label-empty", "demo --out out --target-label ''"),
    ("backdoor-out-holds-input", BACKDOOR + " {train} --out {data} --poison-count 2 --overwrite"),
    ("backdoor-out-empty", BACKDOOR + " {train} --out '' --poison-count 2"),
    ("backdoor-out-cwd", BACKDOOR + " {train} --out . --poison-count 2 --overwrite"),
    ("backdoor-out-existing", BACKDOOR + " {train} --out {poisons} --poison-count 2"),
    (
        "backdoor-merged-csv-dir",
        BACKDOOR + " {train} --out out --poison-count 2 --merged-csv {userdir}",
    ),
    (
        "backdoor-merged-csv-is-input",
        BACKDOOR + " {train} --out out --poison-count 2 --merged-csv {train} --overwrite",
    ),
    # --- bad data and options (section 2)
    ("backdoor-latin1-csv", BACKDOOR + " {latin1} --out out --poison-count 2"),
    (
        "backdoor-separator-double",
        BACKDOOR + " {train} --out out --poison-count 2 --csv-separator ';;'",
    ),
    (
        "backdoor-separator-empty",
        BACKDOOR + " {train} --out out --poison-count 2 --csv-separator ''",
    ),
    ("backdoor-target-label-missing", "poison backdoor --data {train} --out out --poison-count 2"),
    (
        "backdoor-target-label-empty",
        "poison backdoor --data {train} --out out --poison-count 2 --target-label ''",
    ),
    ("backdoor-image-size-0", BACKDOOR + " {train} --out out --poison-count 2 --image-size 0"),
    ("backdoor-mixed-image-sizes", BACKDOOR + " {mixed} --out out --poison-count 1"),  # no --image-size
    (
        "targeted-out-file",
        "poison targeted --data {train} --out {file} --target-image {image} "
        "--target-label heart --poison-count 2",
    ),
    (
        "targeted-bad-image",
        "poison targeted --data {train} --out out --target-image {file} "
        "--target-label heart --poison-count 2",
    ),
    (
        "targeted-classnames-missing",
        "poison targeted --data {train} --out out --target-index 0 --target-split {test} "
        "--target-label star --poison-count 2 --classnames missing.txt",
    ),
    (
        "targeted-classnames-dir",
        "poison targeted --data {train} --out out --target-index 0 --target-split {test} "
        "--target-label star --poison-count 2 --classnames {userdir}",
    ),
    (
        "targeted-classnames-latin1",
        "poison targeted --data {train} --out out --target-index 0 --target-split {test} "
        "--target-label star --poison-count 2 --classnames {latin1_names}",
    ),
    (
        "targeted-latin1-split",
        "poison targeted --data {train} --out out --target-index 0 --target-split {latin1} "
        "--target-label heart --poison-count 2",
    ),
    ("train-batch-larger-than-data", "train --data {train} --out out --preset tiny --batch-size 100000"),
    ("train-device-cuda-or-gpu-index", "train --data {train} --out out --preset tiny --device cuda:99"),
    ("train-device-banana", "train --data {train} --out out --preset tiny --device banana"),
    ("train-out-existing", "train --data {train} --out {ckpt} --preset tiny"),
    ("train-open-clip-out-existing", "train --backend open_clip --data {train} --out {ckpt} --preset tiny"),
    (
        "train-init-checkpoint-zero-bytes",
        "train --data {train} --out out --preset tiny --init-checkpoint {ckpt_zero}",
    ),
    ("train-latin1-csv", "train --data {latin1} --out out --preset tiny"),
    ("train-model-json-not-json", "train --data {train} --out out --preset tiny --model {bad_json}"),
    ("train-model-json-list", "train --data {train} --out out --preset tiny --model {list_json}"),
    (
        "train-model-json-no-vision-cfg",
        "train --data {train} --out out --preset tiny --model {no_vision_json}",
    ),
    ("train-preset-json-not-json", "train --data {train} --out out --preset {bad_json}"),
    ("train-preset-json-list", "train --data {train} --out out --preset {list_json}"),
    ("train-preset-json-wrong-type", "train --data {train} --out out --preset {preset_wrong_type}"),
    (
        "train-open-clip-pretrained-missing-file",  # a real run: the file must be here
        "train --backend open_clip --data {train} --out out --preset tiny --pretrained /no/such/w.pt",
    ),
    (
        "train-dry-run-pretrained-unknown-tag",  # a bare word is a tag: still checked in a dry run
        "train --backend open_clip --dry-run --data {train} --out out --preset tiny --pretrained banana",
    ),
    ("train-separator-empty", "train --data {train} --out out --preset tiny --csv-separator ''"),
    (
        "evaluate-checkpoint-truncated",
        "evaluate --checkpoint {ckpt_truncated} --test {test} --classnames {classnames}",
    ),
    (
        "evaluate-checkpoint-zero-bytes",
        "evaluate --checkpoint {ckpt_zero} --test {test} --classnames {classnames}",
    ),
    (
        "evaluate-checkpoint-garbage",
        "evaluate --checkpoint {ckpt_garbage} --test {test} --classnames {classnames}",
    ),
    (
        "evaluate-checkpoint-bad-json",
        "evaluate --checkpoint {ckpt_bad_json} --test {test} --classnames {classnames}",
    ),
    (
        "evaluate-checkpoint-no-model-cfg",
        "evaluate --checkpoint {ckpt_no_model_cfg} --test {test} --classnames {classnames}",
    ),
    (
        "evaluate-out-dir",
        "evaluate --checkpoint {ckpt} --test {test} --classnames {classnames} --out {userdir}",
    ),
    (
        "evaluate-out-dir-overwrite",
        "evaluate --checkpoint {ckpt} --test {test} --classnames {classnames} --out {poisons} --overwrite",
    ),
    (
        "evaluate-out-existing-file",
        "evaluate --checkpoint {ckpt} --test {test} --classnames {classnames} --out {file}",
    ),
    (
        "evaluate-out-is-input",
        "evaluate --checkpoint {ckpt} --test {test} --classnames {classnames} --out {test} --overwrite",
    ),
    (
        "evaluate-target-label-empty",
        "evaluate --checkpoint {ckpt} --test {test} --classnames {classnames} --target-label ''",
    ),
    ("evaluate-latin1-test", "evaluate --checkpoint {ckpt} --test {latin1} --classnames {classnames}"),
    ("evaluate-latin1-classnames", "evaluate --checkpoint {ckpt} --test {test} --classnames {latin1_names}"),
    ("detect-checkpoint-zero-bytes", "detect --checkpoint {ckpt_zero} --data {train} --out out"),
    ("detect-lid-k-1", "detect --checkpoint {ckpt} --data {train} --out out --lid-k 1"),
    (
        "detect-manifest-no-poison-key",
        "detect --checkpoint {ckpt} --data {train} {poisons}/poisons.csv --out out "
        "--manifest {manifest_no_key}",
    ),
    (
        "detect-manifest-not-json",
        "detect --checkpoint {ckpt} --data {train} {poisons}/poisons.csv --out out --manifest {manifest_bad}",
    ),
    (
        "detect-manifest-latin1",
        "detect --checkpoint {ckpt} --data {train} {poisons}/poisons.csv --out out "
        "--manifest {manifest_latin1}",
    ),
    (
        "detect-loss-record-not-json",
        "detect --checkpoint {ckpt} --data {train} --out out --detectors loss-tracking "
        "--loss-record {loss_bad}",
    ),
    ("detect-out-holds-input", "detect --checkpoint {ckpt} --data {train} --out {ckpt} --overwrite"),
    (
        "defend-checkpoint-no-model-cfg",
        "defend cleanclip --checkpoint {ckpt_no_model_cfg} --clean-data {train} --out out --preset tiny",
    ),
    ("defend-device-banana", "defend roclip --data {train} --out out --preset tiny --device banana"),
    ("defend-out-user-dir", "defend roclip --data {train} --out {userdir} --preset tiny --overwrite"),
    ("sweep-run-binary-toml", "sweep run {binary} --db out.sqlite"),
    ("sweep-run-empty-experiment", "sweep run {empty_toml} --db out.sqlite"),
    ("sweep-run-device-cuda", "sweep run {cuda_toml} --db out.sqlite"),
    ("sweep-run-db-not-sqlite", "sweep run {tiny_toml} --db {file}"),
    ("sweep-run-db-foreign-sqlite", "sweep run {tiny_toml} --db {foreign_db}"),
    ("sweep-run-db-dir", "sweep run {tiny_toml} --db {userdir}"),
    ("sweep-run-workers-0", "sweep run {tiny_toml} --db out.sqlite --workers 0"),
    ("sweep-status-db-not-sqlite", "sweep status {tiny_toml} --db {file}"),
    ("sweep-status-db-dir", "sweep status {tiny_toml} --db {userdir}"),
    ("sweep-status-db-zero-bytes", "sweep status {tiny_toml} --db {zero_db}"),  # not made a database
    ("sweep-status-db-foreign-sqlite", "sweep status {tiny_toml} --db {foreign_db}"),
    ("sweep-status-binary-toml", "sweep status {binary} --db out.sqlite"),
    ("report-not-sqlite", "report {file} --out out"),
    ("report-db-dir", "report {userdir} --out out"),
    ("report-db-missing", "report missing.sqlite --out out"),
    ("report-db-zero-bytes", "report {zero_db} --out out"),
    ("report-out-user-dir", "report {foreign_db} --out {userdir} --overwrite"),
    ("reproduce-binary-toml", "reproduce {binary} --db out.sqlite --out report"),
    ("reproduce-out-user-dir", "reproduce {tiny_toml} --db out.sqlite --out {userdir} --overwrite"),
    ("reproduce-figures-a-file", "reproduce {tiny_toml} --db out.sqlite --out report --figures {file}"),
    ("reproduce-device-cuda", "reproduce {tiny_toml} {cuda_toml} --db out.sqlite --out report"),
    ("reproduce-readme-no-markers", "reproduce {tiny_toml} --db out.sqlite --out report --readme {file}"),
    ("list-unknown", "list banana"),
]
