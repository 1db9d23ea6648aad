"""Data parallelism on the CPU: 2 gloo processes launched by torchrun, no GPU needed.

This file is also the worker: ``python -m torch.distributed.run --nproc-per-node 2
tests/test_distributed.py WORKDIR`` evaluates a saved model on a saved 13-image set
(13 is odd, so the shards differ in size and DistributedSampler would have padded), then
runs a short ``train()`` in the same process group. The tests compare with one process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from herbid.evaluation.metrics import evaluate_model
from herbid.inference.sheets import ShardSampler

#: Both tests share one torchrun launch of 2 processes (14–31 s on a 2-core machine, the slowest
#: fixture of the training tests): deselect with ``-m 'not slow'``.
pytestmark = pytest.mark.slow

N_EVAL = 13
N_CLASSES = 7


def _eval_set(workdir: Path) -> TensorDataset:
    data = torch.load(workdir / "eval_set.pt", weights_only=True)
    return TensorDataset(data["images"], data["targets"])


def _model(workdir: Path) -> torch.nn.Module:
    from herbid.models.registry import create_model

    model, _ = create_model("small_cnn", N_CLASSES)
    model.load_state_dict(torch.load(workdir / "model.pt", weights_only=True))
    return model


# ----------------------------------------------------------------- worker side


def _worker(workdir: Path) -> None:
    import torch.distributed as dist

    from herbid.training.config import load_config
    from herbid.training.loop import train

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    dataset = _eval_set(workdir)
    loader = DataLoader(dataset, batch_size=4, sampler=ShardSampler(len(dataset), rank, world))
    result = evaluate_model(_model(workdir), loader, "cpu", distributed=True)
    shard = len(loader.sampler)
    (workdir / f"eval-rank{rank}.json").write_text(json.dumps({"result": result, "shard": shard}))

    config = load_config(workdir / "train.yaml", {})
    run = train(config, progress=False)
    (workdir / f"train-rank{rank}.json").write_text(json.dumps({"final": run.final, "history": run.history}))
    dist.destroy_process_group()


# ------------------------------------------------------------------- test side


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from herbid.data.build import BuildOptions, build_dataset
    from herbid.data.splits import split_dataset
    from herbid.data.synthetic import make_synthetic_collection
    from herbid.models.registry import create_model
    from herbid.training.config import TrainConfig, save_config

    workdir = tmp_path_factory.mktemp("ddp")
    generator = torch.Generator().manual_seed(0)
    torch.save({"images": torch.randn(N_EVAL, 3, 48, 48, generator=generator),
                "targets": torch.randint(0, N_CLASSES, (N_EVAL,), generator=generator)}, workdir / "eval_set.pt")
    torch.manual_seed(1)
    model, _ = create_model("small_cnn", N_CLASSES)
    torch.save(model.state_dict(), workdir / "model.pt")

    source = make_synthetic_collection(workdir / "source", n_species=3, per_species=5, seed=3)
    build_dataset([source], workdir / "sheets", BuildOptions(workers=1, progress=False))
    split_dataset(workdir / "sheets", by="collector", test_fraction=0.3, seed=0)
    save_config(TrainConfig.from_recipe("paper", dataset=str(workdir / "sheets"), out=str(workdir / "run"), arch="small_cnn", epochs=2,
                            batch_size=4, lr=0.02, workers=0), workdir / "train.yaml")

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               __file__, str(workdir)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return workdir


def test_distributed_evaluation_counts_each_image_once(launched: Path) -> None:
    single = evaluate_model(_model(launched), DataLoader(_eval_set(launched), batch_size=5), "cpu")
    ranks = [json.loads((launched / f"eval-rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["shard"] for r in ranks] == [7, 6]  # unpadded shards of 13
    for rank in ranks:
        result = rank["result"]
        assert result["n"] == single["n"] == N_EVAL
        assert round(result["top1"] * N_EVAL) == round(single["top1"] * N_EVAL)
        assert round(result["top5"] * N_EVAL) == round(single["top5"] * N_EVAL)
        assert result["top1"] == single["top1"] and result["top5"] == single["top5"]
        assert result["loss"] == pytest.approx(single["loss"], rel=1e-6)


def test_two_process_training_writes_one_bundle(launched: Path) -> None:
    from herbid.data.dataset_folder import load_manifest
    from herbid.inference.bundle import load_bundle
    from herbid.training.curves import read_metrics

    run = launched / "run"
    bundle = load_bundle(run)
    assert bundle.provenance["world_size"] == 2 and len(bundle.species) == 3
    assert [row["epoch"] for row in read_metrics(run)] == [1, 2]  # one writer, no duplicate rows
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []  # no stray temp files
    n_test = int((load_manifest(launched / "sheets")["split"] == "test").sum())
    finals = [json.loads((launched / f"train-rank{r}.json").read_text())["final"] for r in (0, 1)]
    assert finals[0] == finals[1] and finals[0]["n"] == n_test  # every rank agrees; each image once
    assert json.loads((run / "run.json").read_text())["final"] == finals[0]


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
