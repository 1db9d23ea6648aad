"""Training and inference throughput: herbid's loop against a bare PyTorch loop.

Both sides run in this process on the same synthetic dataset, the same architecture
(built by ``create_model`` with the same seed), the same batch size, channels_last and the
same number of DataLoader workers (``--workers``, capped on the CPU as ``train()`` caps it,
see ``herbid.training.prepare.loader_workers``, so the ratio measures the loop alone):

* **training**: ``herbid.training.loop.train()`` (``max_steps_per_epoch`` steps per epoch;
  the images/s it records for each epoch times its inner loop only) against a minimal
  loop: a torchvision ``RandomCrop``/``RandomHorizontalFlip``/``ToTensor``/``Normalize``
  dataset, ``DataLoader(shuffle=True)``, forward, loss, backward, SGD step.
* **inference**: ``herbid.evaluation.evaluate_model`` on herbid's eval loader against a
  bare ``torch.no_grad()`` loop over a torchvision ``CenterCrop`` loader.

Epoch 1 includes worker start-up on both sides; the ratio uses the later epochs. Runs are
interleaved (bare, herbid, bare, herbid, ...). Per round and side, the median step-to-step
time of the steady epochs gives images/s (robust to short bursts of load from other
processes); the headline ratio is the median over rounds of herbid/bare, each round's two
runs being back to back. The per-epoch images/s that ``train()`` records are printed too.

    python benchmarks/train_throughput.py [--arch efficientnet_lite0] [--batch 16]
        [--steps 8] [--epochs 2] [--repeat 3] [--workers 2] [--threads N] [--data DATASET]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision.transforms as T
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from herbid.data.build import BuildOptions, build_dataset
from herbid.data.dataset_folder import load_manifest
from herbid.data.splits import split_dataset
from herbid.data.synthetic import make_synthetic_collection
from herbid.evaluation.metrics import evaluate_model
from herbid.inference.pixels import eval_transform
from herbid.inference.sheets import ManifestDataset, select_rows, species_and_taxonomy
from herbid.models.registry import create_model
from herbid.training.config import TrainConfig
from herbid.training.loop import TrainHooks, train
from herbid.training.prepare import loader_workers


class BareDataset(Dataset):
    """What a plain PyTorch script would write: PIL open, torchvision transforms."""

    def __init__(self, root: Path, frame, species: list[str], transform) -> None:
        self.root, self.transform = root, transform
        index = {name: i for i, name in enumerate(species)}
        self.items = [(p, index[s]) for p, s in zip(frame["image_path"], frame["scientificName"])]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        path, label = self.items[i]
        with Image.open(self.root / path) as image:
            return self.transform(image.convert("RGB")), label


def bare_transforms(preprocessing, train: bool):
    resize = [] if preprocessing.resize_size == 256 else [T.Resize((preprocessing.resize_size,) * 2)]
    crop = ([T.RandomCrop(preprocessing.input_size), T.RandomHorizontalFlip()] if train
            else [T.CenterCrop(preprocessing.input_size)])
    return T.Compose(resize + crop + [T.ToTensor(), T.Normalize(preprocessing.mean, preprocessing.std)])


def make_dataset(root: Path, species: int, per_species: int) -> Path:
    source = make_synthetic_collection(root / "source", n_species=species, per_species=per_species, seed=0)
    data = root / "data"
    build_dataset([source], data, BuildOptions(workers=2, progress=False))
    split_dataset(data, by="collector", test_fraction=0.25, seed=0)
    return data


class StepClock:
    """Step-to-step intervals per epoch; their median is robust to bursts of load from
    other processes, which move whole-epoch images/s by ±10 % on a shared machine."""

    def __init__(self) -> None:
        self.stamps: dict[int, list[float]] = {}

    def __call__(self, epoch: int, step: int) -> None:
        self.stamps.setdefault(epoch, []).append(time.perf_counter())

    def intervals(self, first_epoch: int) -> list[float]:
        return [b - a for epoch, ts in self.stamps.items() if epoch >= first_epoch for a, b in zip(ts, ts[1:])]


def bare_training(args, data: Path, frame, species, preprocessing, clock: StepClock) -> list[float]:
    """Images/s per epoch of a minimal training loop."""
    torch.manual_seed(0)
    model, _ = create_model(args.arch, len(species))
    model = model.to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0075, momentum=0.9, weight_decay=2e-4)
    dataset = BareDataset(data, select_rows(frame, split="train"), species, bare_transforms(preprocessing, True))
    loader = DataLoader(dataset, batch_size=args.batch, shuffle=True, drop_last=True, num_workers=args.workers,
                        persistent_workers=args.workers > 0)
    rates = []
    for epoch in range(1, args.epochs + 1):
        start, seen = time.perf_counter(), 0
        for step, (images, targets) in enumerate(loader):
            if step >= args.steps:
                break
            images = images.to(memory_format=torch.channels_last)
            loss = F.cross_entropy(model(images), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            seen += len(targets)
            clock(epoch, step)
        rates.append(seen / (time.perf_counter() - start))
    return rates


def herbid_training(args, data: Path, out: Path, clock: StepClock) -> list[float]:
    """Images/s per epoch as ``train()`` records them (its inner loop only)."""
    config = TrainConfig.from_recipe("paper", dataset=str(data), out=str(out), arch=args.arch, batch_size=args.batch, epochs=args.epochs,
                         max_steps_per_epoch=args.steps, workers=args.workers, channels_last=True)
    result = train(config, progress=False, hooks=TrainHooks(on_step=clock))
    return [row["images_per_second"] for row in result.history]


def inference(args, data: Path, frame, species, preprocessing) -> tuple[float, float]:
    """(herbid evaluate_model, bare no_grad) images/s on the test split, same model."""
    torch.manual_seed(0)
    model, _ = create_model(args.arch, len(species))
    model = model.to(memory_format=torch.channels_last).eval()
    test = select_rows(frame, split="test")
    herbid_loader = DataLoader(ManifestDataset(data, test, species, eval_transform(preprocessing)),
                               batch_size=args.batch, num_workers=args.workers)
    bare_loader = DataLoader(BareDataset(data, test, species, bare_transforms(preprocessing, False)),
                             batch_size=args.batch, num_workers=args.workers)

    def herbid() -> float:
        start = time.perf_counter()
        result = evaluate_model(model, herbid_loader, "cpu")
        return result["n"] / (time.perf_counter() - start)

    def bare() -> float:
        start, seen, correct = time.perf_counter(), 0, 0
        with torch.no_grad():
            for images, targets in bare_loader:
                logits = model(images.to(memory_format=torch.channels_last))
                correct += int((logits.argmax(1) == targets).sum())
                seen += len(targets)
        return seen / (time.perf_counter() - start)

    rates: dict[str, list[float]] = {"herbid": [], "bare": []}
    for _ in range(args.repeat + 2):
        rates["bare"].append(bare())
        rates["herbid"].append(herbid())
    # the first round warms up; median of the rest
    return statistics.median(rates["herbid"][1:]), statistics.median(rates["bare"][1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="efficientnet_lite0")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8, help="training steps per epoch")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per run (the first is warm-up)")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved runs of each loop")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's); 1 is steadier on a busy machine")
    parser.add_argument("--data", type=Path, help="an existing split dataset (default: a synthetic one)")
    parser.add_argument("--species", type=int, default=8)
    parser.add_argument("--per-species", type=int, default=32)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    requested = args.workers
    args.workers = loader_workers(requested, torch.device("cpu"))

    with tempfile.TemporaryDirectory(prefix="herbid-bench-") as tmp:
        tmp = Path(tmp)
        started = time.perf_counter()
        data = args.data or make_dataset(tmp, args.species, args.per_species)
        frame = load_manifest(data)
        species, _ = species_and_taxonomy(frame)
        preprocessing = create_model(args.arch, len(species))[0].preprocessing
        n_train = int((frame["split"] == "train").sum())
        print(f"dataset: {len(frame)} images ({n_train} train), {len(species)} species, "
              f"built in {time.perf_counter() - started:.0f} s; arch {args.arch}, batch {args.batch}, "
              f"{args.steps} steps × {args.epochs} epochs, {args.workers} workers ({requested} requested), "
              f"{torch.get_num_threads()} torch threads")
        if n_train < args.batch * args.steps:
            print(f"note: only {n_train // args.batch} full batches per epoch")

        bare_rates, herbid_rates = [], []
        bare_steps, herbid_steps = [], []  # per round: images/s from the median step time
        first = 2 if args.epochs > 1 else 1
        for r in range(args.repeat):
            bare_clock, herbid_clock = StepClock(), StepClock()
            bare_rates.append(bare_training(args, data, frame, species, preprocessing, bare_clock))
            herbid_rates.append(herbid_training(args, data, tmp / f"run{r}", herbid_clock))
            bare_steps.append(args.batch / statistics.median(bare_clock.intervals(first)))
            herbid_steps.append(args.batch / statistics.median(herbid_clock.intervals(first)))
            print(f"  round {r + 1}: bare {_fmt(bare_rates[-1])}  herbid {_fmt(herbid_rates[-1])} images/s per epoch; "
                  f"median step: bare {bare_steps[-1]:.1f}  herbid {herbid_steps[-1]:.1f}")
        steady = slice(1, None) if args.epochs > 1 else slice(None)
        bare_epoch = statistics.median(rate for rates in bare_rates for rate in rates[steady])
        herbid_epoch = statistics.median(rate for rates in herbid_rates for rate in rates[steady])
        # Each round pairs runs made back to back, so the median of the per-round ratios
        # cancels slow drifts in the load other processes put on the machine.
        ratio = statistics.median(h / b for h, b in zip(herbid_steps, bare_steps))
        print(f"training  images/s  herbid {statistics.median(herbid_steps):7.1f}  "
              f"bare {statistics.median(bare_steps):7.1f}  ratio {ratio:.3f}  (median step, median of "
              f"{args.repeat} paired rounds; per-epoch medians: herbid {herbid_epoch:.1f}, bare {bare_epoch:.1f})")

        herbid_eval, bare_eval = inference(args, data, frame, species, preprocessing)
        print(f"inference images/s  herbid {herbid_eval:7.1f}  bare {bare_eval:7.1f}  "
              f"ratio {herbid_eval / bare_eval:.3f} (median of {args.repeat + 1} passes)")
        print(f"total {time.perf_counter() - started:.0f} s")


def _fmt(rates: list[float]) -> str:
    return "/".join(f"{r:.1f}" for r in rates)


if __name__ == "__main__":
    main()
