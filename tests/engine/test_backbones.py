"""Backbone registry, cut semantics (the reference's block/layer pairs) and weights loading."""
from __future__ import annotations

import pytest
import torch

from engine import backbones
from engine.backbones import BackboneError, build_cut, list_cuts, resolve

from helpers import MOBILENET_WEIGHTS, needs_shared


def test_default_cuts():
    assert resolve("densenet169", None).name == "denseblock4.12"
    assert resolve("mobilenet_v2", None).name == "features"
    assert resolve("resnet50", None).name == "features"


@pytest.mark.parametrize("pair,name", [("10.12", "denseblock4.12"), ("8.0", "denseblock3"), ("9.0", "transition3")])
def test_reference_block_layer_pairs(pair, name):
    assert resolve("densenet169", pair).name == name


def test_densenet_cut_keeps_first_layers_like_the_reference():
    """Reference: features[:block+1], then delattr of dense layers layer+1..n of the last block."""
    from torchvision.models import densenet169

    torch.manual_seed(0)
    full = densenet169(weights=None).features.eval()
    module, cut = build_cut("densenet169", "denseblock4.12", "random", seed=0)
    # the reference construction, from the same seeded weights
    torch.manual_seed(0)
    ref = densenet169(weights=None).features[:11].eval()
    for i in range(13, 33):
        delattr(ref[-1], f"denselayer{i}")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ours, theirs = module(x), ref(x).flatten(1)
    assert ours.shape == theirs.shape == (1, 1024 * 2 * 2)
    torch.testing.assert_close(ours, theirs)
    assert len(full.denseblock4) == 32  # the source model is not mutated by cutting


def test_list_cuts_shapes_match_modules():
    rows = {r["cut"]: r for r in list_cuts("densenet121", input_size=64)}
    assert rows["denseblock4.12"]["shape"] == [512 + 12 * 32, 2, 2]
    assert "transition1.1" not in rows  # transitions are atomic, as in the reference
    for name in ("pool0", "denseblock2.5", "transition3", "norm5"):
        module, _ = build_cut("densenet121", name, "random")
        with torch.no_grad():
            n = module(torch.zeros(1, 3, 64, 64)).shape[1]
        assert n == rows[name]["features"], name
    assert sum(r["default"] for r in rows.values()) == 1


def test_densenet169_reference_feature_count():
    rows = {r["cut"]: r for r in list_cuts("densenet169")}
    assert rows["denseblock4.12"]["features"] == 50176 and rows["denseblock4.12"]["default"]


def test_unknown_model_lists_valid_ones():
    with pytest.raises(BackboneError, match=r"unknown model 'densenet999'.*densenet121, densenet161"):
        resolve("densenet999", None)


def test_unknown_cut_lists_valid_ones():
    with pytest.raises(BackboneError, match=r"unknown cut 'denseblock9'.*otl cuts densenet121"):
        resolve("densenet121", "denseblock9")
    with pytest.raises(BackboneError, match=r"unknown cut 'denseblock1.7'"):
        resolve("densenet121", "denseblock1.7")  # denseblock1 has 6 layers


def test_weights_file_missing(tmp_path):
    with pytest.raises(BackboneError, match=r"neither 'imagenet', 'random' nor an existing file; pass imagenet, "
                                            r"random or a .pth state dict"):
        build_cut("densenet121", "transition1", str(tmp_path / "nope.pth"))


def test_weights_for_another_architecture(tmp_path):
    from torchvision.models import resnet18

    path = tmp_path / "resnet18.pth"
    torch.save(resnet18(weights=None).state_dict(), path)
    with pytest.raises(BackboneError, match=r"do not fit densenet121.*another architecture"):
        build_cut("densenet121", "transition1", str(path))


def test_weights_file_roundtrip(tmp_path):
    from torchvision.models import densenet121

    torch.manual_seed(3)
    net = densenet121(weights=None)
    path = tmp_path / "d121.pth"
    torch.save(net.state_dict(), path)
    module, _ = build_cut("densenet121", "transition1", str(path))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(module(x), net.features[:6].eval()(x).flatten(1))
    assert backbones.weights_id(str(path), 0, "densenet121").startswith("file:")


def test_random_weights_are_seeded():
    a, _ = build_cut("densenet121", "pool0", "random", seed=1)
    b, _ = build_cut("densenet121", "pool0", "random", seed=1)
    c, _ = build_cut("densenet121", "pool0", "random", seed=2)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(a(x), b(x)) and not torch.equal(a(x), c(x))


def test_offline_without_cached_imagenet_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(BackboneError, match=r"mobilenet_v2-b0353104\.pth.*hub/checkpoints.*--weights random"):
        build_cut("mobilenet_v2", None, "imagenet")


@needs_shared(MOBILENET_WEIGHTS)
def test_imagenet_weights_from_torch_home(with_torch_home):
    module, cut = build_cut("mobilenet_v2", None, "imagenet")
    state = torch.load(MOBILENET_WEIGHTS, weights_only=True)
    torch.testing.assert_close(module[0][0][0].weight, state["features.0.0.weight"])
    pre = backbones.preprocess_for("mobilenet_v2", "imagenet")
    assert (pre.resize_size, pre.crop_size) == (256, 224)


def test_a_map_below_1x1_names_the_smallest_valid_size():
    from engine.backbones import cut_map_shape, list_cuts, smallest_input_size

    assert smallest_input_size("vgg16", None) == 32  # five 2x2 max-pools: 31 -> 0x0
    assert cut_map_shape("vgg16", None, 32)[1:] == (1, 1)
    for call in (lambda: cut_map_shape("vgg16", None, 20), lambda: list_cuts("vgg16", 20)):
        with pytest.raises(BackboneError, match=r"--input-size 20: vgg16 maps it to less than 1x1 by cut "
                                                r"features; the smallest valid size there is 32"):
            call()


def test_an_input_too_large_for_memory_is_refused_before_any_allocation(monkeypatch):
    from engine.backbones import activation_bytes, build_cut, sizes

    # The input alone: 3 x S x S float32 per image, plus every layer's output.
    assert activation_bytes("resnet18", "conv1", 100, batch=2) == 2 * 4 * (3 * 100 * 100 + 64 * 50 * 50)
    monkeypatch.setattr(sizes, "_machine_memory", lambda: 8 << 30)
    with pytest.raises(MemoryError, match=r"--input-size 100000: resnet18 cut features needs about [\d.]+ GiB of "
                                          r"activations for 2 images, more than this machine's 8.0 GiB"):
        build_cut("resnet18", None, "random", input_size=100000)


def test_make_build_refuses_a_too_large_input_before_making_the_folder(tmp_path, monkeypatch):
    from engine.backbones import sizes
    from engine.build import BuildConfig, make_build

    monkeypatch.setattr(sizes, "_machine_memory", lambda: 8 << 30)
    with pytest.raises(MemoryError, match=r"--input-size 100000: resnet18 .* pass a smaller --input-size"):
        make_build(BuildConfig(model="resnet18", weights="random", input_size=100000, out=str(tmp_path / "b")))
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("content, kind", [
    (b"hello, not weights\n", "a text file"),  # torch.load says only "101"
    # torch said "re-run with weights_only=False" for this one
    (bytes(range(7, 256)) * 20, "binary data that is neither zip nor pickle"),
    (None, "a zip archive holding Python objects besides tensors, e.g. a whole pickled model"),
])
def test_a_weights_file_that_is_not_a_state_dict_says_what_it_is(tmp_path, content, kind):
    p = tmp_path / "w.pth"
    if content is None:
        torch.save(torch.nn.Linear(2, 2), p)  # the whole module, not its state_dict
    else:
        p.write_bytes(content)
    with pytest.raises(BackboneError, match=rf"^{p} is not a torch checkpoint \({kind}\); pass a .pth state dict "
                                            r"saved by torch.save\(model.state_dict\(\), PATH\)$"):
        build_cut("resnet18", None, str(p))
    with pytest.raises(BackboneError, match=r"weights '.*' is a directory; pass imagenet, random or a .pth"):
        build_cut("resnet18", None, str(tmp_path))
