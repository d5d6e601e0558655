"""What ``gpu_check.py`` measures: the sizes of a full run and of ``--smoke``, and the five checks
(``demo``, ``trainer``, ``many``, ``zscore``, ``compile``), each a function of the run's ``Options``
that returns its line (the checks and their ratios are described in ``gpu_check.py``).

Imported by ``gpu_check.py`` beside it (run as ``python bench/gpu_check.py``, which puts this folder
on ``sys.path``).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from bench_many import steady_rate, time_methods
from bench_trainer import flops_per_sample, open_clip_rate
from bench_zscore import bare_gram_seconds, embeddings
from timing import matmul_flops, median_seconds, synchronize, synthetic_dataset

from poisonclip.data.synthetic import SyntheticConfig
from poisonclip.data.wds import write_shards
from poisonclip.evaluate.metrics import pair_similarity_moments
from poisonclip.experiments.demo import DemoConfig, run_demo
from poisonclip.train.config import TrainConfig, load_preset
from poisonclip.train.loop import TrainStats, autocast_dtype, train_clip
from poisonclip.train.model import create_model, get_model_config, tokenize
from poisonclip.train.open_clip_backend import OpenClipRun, default_workers
from poisonclip.train.parallel import available_cores, torch_threads


@dataclass(frozen=True)
class Sizes:
    """How much each check does: the full run (on a GPU) or ``--smoke`` (toy sizes, a CPU)."""

    demo: DemoConfig  # the demo as ``poisonclip demo`` runs it, or shrunk
    cpu_steps: int  # demo-model steps timed on the CPU to project the demo's CPU time
    preset: str  # model and batch size of the trainer, many and compile checks
    steps: int  # training steps a model in those checks
    seeds: tuple[int, int]  # the steady multi-seed rate is taken between these S
    zscore_n: int  # embeddings (d = 512) in the z-score check
    matmul_size: int  # side of the square matmul that measures the peak FLOP/s
    budget: float  # seconds for the whole run
    timeouts: dict[str, float]  # seconds a check may take
    # Cores each check's process may use (None: all). One in --smoke: the demo then trains in its
    # own process, as on a GPU, instead of spawning one per model (seconds of imports each).
    cores: int | None = None


FULL = Sizes(
    demo=DemoConfig(),
    cpu_steps=50,
    preset="demo",
    steps=300,
    seeds=(2, 8),
    zscore_n=1_000_000,
    matmul_size=8192,  # 1.1 TFLOP a call: smaller ones leave a large GPU partly idle
    budget=440,  # with start-up and the last check's clean-up, within 8 minutes
    timeouts={"device": 60, "demo": 180, "trainer": 150, "many": 150, "zscore": 60, "compile": 180},
)
SMOKE = Sizes(
    demo=DemoConfig(
        data=SyntheticConfig(num_train=640, num_test=100), train=load_preset("tiny"), poison_count=10
    ),
    cpu_steps=3,
    preset="tiny",
    steps=8,
    seeds=(2, 3),
    zscore_n=5_000,
    matmul_size=256,
    budget=300,
    timeouts={"device": 60, "demo": 120, "trainer": 120, "many": 120, "zscore": 60, "compile": 120},
    cores=1,
)


@dataclass(frozen=True)
class Options:
    device: str  # "cuda" or "cpu"
    sizes: Sizes
    host: str  # the host's CPU, cores, torch and load, taken before a check's process is pinned


class StepClock:
    """``train_clip``'s ``on_batch``: the wall time when ``train_clip`` was called and at the end of
    steps ``first`` and ``last``, each read after the device has finished (CUDA runs ahead)."""

    def __init__(self, batch_size: int, first: int, last: int):
        self.batch_size, self.first, self.last = batch_size, first, last
        self.step = 0
        synchronize()
        self.times = {"start": time.perf_counter()}

    def __call__(self, epoch: int, ids: torch.Tensor, losses: torch.Tensor) -> None:
        if self.step in (self.first, self.last):
            synchronize()
            self.times[self.step] = time.perf_counter()
        self.step += 1

    def samples_per_second(self) -> float:
        """Between the end of step ``first`` and the end of step ``last``."""
        return (self.last - self.first) * self.batch_size / (self.times[self.last] - self.times[self.first])

    def seconds_to_first(self) -> float:
        """From the call to the end of step ``first``: set-up and the first steps."""
        return self.times[self.first] - self.times["start"]


def precision_label(config: TrainConfig, device: torch.device) -> str:
    dtype = autocast_dtype(config.precision, device)
    return "fp32" if dtype is None else f"{str(dtype).removeprefix('torch.')} autocast"


def tflops(value: float) -> str:
    return f"{value / 1e12:.3g} TFLOP/s"


def projected_cpu_seconds(config: TrainConfig, steps: list[int], timed_steps: int) -> tuple[float, int, int]:
    """(seconds, processes, threads each): how long trainings of ``steps`` steps would take on this
    host's CPU as ``poisonclip demo`` runs them there, side by side in processes with a share of the
    cores each (``run_in_processes``), projected from ``timed_steps`` steps of one model timed here
    on that share (processes running side by side may slow each other a little: a lower bound)."""
    processes = min(len(steps), available_cores())
    threads = max(1, available_cores() // processes)
    cpu_config = config.replace(device="cpu", epochs=1)
    data = synthetic_dataset(timed_steps * cpu_config.batch_size)
    model_config = get_model_config(cpu_config.model)
    with torch_threads(threads):
        stats = train_clip(
            create_model(model_config),
            data.images,
            tokenize(data.captions, model_config),
            cpu_config,
            progress=False,
        )
    per_step = stats.train_seconds / stats.steps
    return max(sum(steps[i::processes]) for i in range(processes)) * per_step, processes, threads


def check_demo(options: Options) -> str:
    demo = options.sizes.demo
    config = replace(demo, train=demo.train.replace(device=options.device))
    with tempfile.TemporaryDirectory() as tmp:
        summary = run_demo(config, Path(tmp) / "demo", progress=False)
    clean, backdoor = summary["clean"], summary["backdoor"]
    loops = clean["train_seconds"] + backdoor["train_seconds"]  # one after the other on a GPU
    cpu, processes, threads = projected_cpu_seconds(
        config.train, [clean["train_steps"], backdoor["train_steps"]], options.sizes.cpu_steps
    )
    data = "data on the device" if config.train.data_on_device else "data in CPU memory"
    return (
        f"demo on {options.device} ({precision_label(config.train, torch.device(options.device))}, "
        f"{data}): clean and backdoored models ({config.data.num_train:,} and "
        f"{config.data.num_train + config.poison_count:,} pairs, {config.train.epochs} epoch(s)) trained in "
        f"{loops:.1f} s (training loops), whole demo {summary['wall_seconds']:.1f} s (data, training, "
        f"evaluation); clean / backdoored model: zero-shot {clean['zero_shot_acc']:.3f} / "
        f"{backdoor['zero_shot_acc']:.3f}, ASR {clean['asr']:.3f} / {backdoor['asr']:.3f}, z "
        f"{clean['zscore']:.2f} / {backdoor['zscore']:.2f}; the same trainings on this host's CPU as "
        f"the demo runs them there (fp32, {processes} process(es) of {threads} thread(s) side by side; "
        f"projected from {options.sizes.cpu_steps} steps timed) {cpu:,.1f} s; speed-up {cpu / loops:.1f}x"
    )


def check_trainer(options: Options) -> str:
    device = torch.device(options.device)
    config = load_preset(options.sizes.preset).replace(epochs=1, device=options.device, seed=0)
    samples = options.sizes.steps * config.batch_size
    dataset = synthetic_dataset(samples)
    workers = default_workers(1)
    with tempfile.TemporaryDirectory() as tmp:
        # 4 shards a loader worker: each worker reads whole shards, so fewer would leave some idle
        shards = write_shards(Path(tmp) / "shards", dataset, math.ceil(samples / (4 * workers)))
        run = OpenClipRun(
            shards.url, samples, workers=workers, logs=str(Path(tmp) / "logs"), name="gpu-check"
        )
        # First, before this process holds the GPU (in exclusive mode a GPU takes one process).
        failure: Exception | None = None
        try:
            theirs = open_clip_rate(config, run, Path(tmp), cuda=device.type == "cuda", torchrun=True)
        except Exception as err:  # ours is still measured: the line keeps that half
            failure = err

    model_config = get_model_config(config.model)
    tokens = tokenize(dataset.captions, model_config)
    model = create_model(model_config, seed=config.seed)
    clock = StepClock(config.batch_size, first=0, last=options.sizes.steps - 1)  # as open_clip_rate
    train_clip(model, dataset.images, tokens, config, progress=False, on_batch=clock)
    ours = clock.samples_per_second()
    batch = slice(0, config.batch_size)
    per_sample = flops_per_sample(model, dataset.images[batch].to(device), tokens[batch].to(device))
    dtype = autocast_dtype(config.precision, device) or torch.float32
    size = options.sizes.matmul_size
    peak = matmul_flops(dtype, size, device=options.device)
    utilisation = (
        f"{per_sample / 1e6:.1f} MFLOP/sample (forward x 3) -> {tflops(per_sample * ours)} = "
        f"{per_sample * ours / peak:.2%} of a {size}x{size} {str(dtype).removeprefix('torch.')} "
        f"matmul's {tflops(peak)}"
    )
    if failure is not None:  # the log gets open_clip_train's output with the traceback
        first = str(failure).splitlines()[0] if str(failure) else type(failure).__name__
        raise RuntimeError(f"{first} (ours alone: {ours:,.0f} samples/s; {utilisation})") from failure
    return (
        f"trainer on {options.device} ({precision_label(config, device)}): {config.model}, batch "
        f"{config.batch_size}, {options.sizes.steps} steps, {samples:,} synthetic samples as "
        f"{shards.num_shards} webdataset shards: ours (in memory) {ours:,.0f} samples/s; open_clip_train "
        f"(torchrun --nproc-per-node 1, {workers} loader workers) {theirs:,.0f} samples/s; "
        f"{utilisation}; speed-up vs open_clip_train {ours / theirs:.2f}x"
    )


def loop_seconds(method: str, stats: list[TrainStats]) -> float:
    """The training loops' wall time in one ``train_many`` call: a group's loop is shared by its
    models (each one's stats hold the whole group's time); sequential loops add up."""
    return max(s.train_seconds for s in stats) if method == "grouped" else sum(s.train_seconds for s in stats)


def check_many(options: Options) -> str:
    config = load_preset(options.sizes.preset).replace(epochs=1, device=options.device)
    small, large = options.sizes.seeds
    methods = ("grouped", "sequential")
    timings = time_methods(
        synthetic_dataset(options.sizes.steps * config.batch_size), config, (small, large), methods
    )
    steady = {m: steady_rate(timings, small, large, m) for m in methods}
    loops = {
        m: (large - small)
        * 3600
        / (loop_seconds(m, timings[large, m][1]) - loop_seconds(m, timings[small, m][1]))
        for m in methods
    }
    return (
        f"many on {options.device} ({precision_label(config, torch.device(options.device))}): S={large} "
        f"{config.model} models, batch {config.batch_size}, {options.sizes.steps} steps each; steady "
        f"(S={small}->{large}) trials/hour grouped {steady['grouped']:,.0f}, sequential "
        f"{steady['sequential']:,.0f}; training loops alone grouped {loops['grouped']:,.0f}, sequential "
        f"{loops['sequential']:,.0f} ({loops['grouped'] / loops['sequential']:.2f}x); steady grouped vs "
        f"sequential {steady['grouped'] / steady['sequential']:.2f}x"
    )


def check_zscore(options: Options) -> str:
    n, d, repeats = options.sizes.zscore_n, 512, 5
    features, _ = embeddings(n, d, seed=1, device=options.device)
    moments = median_seconds(lambda: pair_similarity_moments(features), repeats)
    floor = bare_gram_seconds(features, repeats)
    subset = features[:50_000]
    here, cpu = pair_similarity_moments(subset), pair_similarity_moments(subset.cpu())
    difference = max(abs(a - b) / abs(b) for a, b in zip(here, cpu, strict=True))
    return (
        f"zscore on {options.device}: pair-similarity moments of N={n:,} d={d} embeddings (exact over "
        f"all pairs, float64) {moments * 1e3:.1f} ms; one bare float64 X.T@X {floor * 1e3:.1f} ms; on "
        f"{len(subset):,} of them the same moments as on the CPU to {difference:.0e} relative; moments / "
        f"X.T@X {moments / floor:.2f}"
    )


@contextlib.contextmanager
def compile_backend(backend: str) -> Iterator[None]:
    """``torch.compile`` with ``backend`` inside the block (``train_clip`` calls it itself)."""
    compile_ = torch.compile
    torch.compile = functools.partial(compile_, backend=backend)
    try:
        yield
    finally:
        torch.compile = compile_


def check_compile(options: Options) -> str:
    device = torch.device(options.device)
    config = load_preset(options.sizes.preset).replace(epochs=1, device=options.device, seed=0)
    model_config = get_model_config(config.model)
    dataset = synthetic_dataset(options.sizes.steps * config.batch_size)
    tokens = tokenize(dataset.captions, model_config)
    steps = options.sizes.steps
    warm = max(1, steps // 10)  # compiling happens in step 0; a recompile would come soon after

    def timed(train_config: TrainConfig, num_steps: int) -> StepClock:
        """A training of ``num_steps`` steps (one epoch), clocked from step ``warm``'s end."""
        clock = StepClock(train_config.batch_size, first=warm, last=num_steps - 1)
        model = create_model(model_config, seed=train_config.seed)
        samples = slice(0, num_steps * train_config.batch_size)
        train_clip(
            model, dataset.images[samples], tokens[samples], train_config, progress=False, on_batch=clock
        )
        return clock

    timed(config, warm + 1)  # warm-up: the device's own first-use costs count against neither side
    eager = timed(config, steps)
    # Inductor compiles C++ for a CPU, minutes on a small one: there (--smoke) aot_eager, which
    # traces and replays the same graphs without generating code.
    backend = "inductor" if device.type == "cuda" else "aot_eager"
    # Inductor keeps compiled kernels on disk for later processes: time a first compile, as on a
    # fresh machine, whatever ran here before.
    with tempfile.TemporaryDirectory() as cache, compile_backend(backend):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
        compiled = timed(config.replace(compile=True), steps)
    compile_seconds = compiled.seconds_to_first() - eager.seconds_to_first()
    saved = config.batch_size / eager.samples_per_second() - config.batch_size / compiled.samples_per_second()
    pays_off = f"; pays for itself after {compile_seconds / saved:,.0f} steps" if saved > 0 else ""
    return (
        f"compile on {options.device} ({precision_label(config, device)}, {backend}): {config.model}, "
        f"batch {config.batch_size}, {steps} steps: steady {compiled.samples_per_second():,.0f} samples/s "
        f"compiled vs {eager.samples_per_second():,.0f} eager; compile time {compile_seconds:.1f} s (the "
        f"first {warm + 1} steps, compiled minus eager; empty compile cache){pays_off}; compiled / "
        f"eager {compiled.samples_per_second() / eager.samples_per_second():.2f}x"
    )
