"""iresnet layout (InsightFace key names), weight loading round trip, clear errors, ArcFace."""
import math

import pytest
import torch

from model.identity import (ARCHS, ArcMarginHead, IdentityWeightsError, IResNet, build_identity,
                            infer_identity_config)
from train.checkpoint import load_identity_file


def test_insightface_key_names_and_arch_inference():
    with torch.device("meta"):
        net = IResNet(ARCHS["iresnet50"])            # 112x112, width 64: the published layout
    sd = net.state_dict()
    for k in ("conv1.weight", "bn1.running_var", "prelu.weight", "layer1.0.bn1.weight",
              "layer1.0.conv1.weight", "layer1.0.bn2.weight", "layer1.0.prelu.weight",
              "layer1.0.conv2.weight", "layer1.0.bn3.weight", "layer1.0.downsample.0.weight",
              "layer1.0.downsample.1.running_mean", "layer3.13.conv2.weight", "bn2.weight",
              "fc.weight", "features.running_mean"):
        assert k in sd, k
    assert tuple(sd["fc.weight"].shape) == (512, 512 * 7 * 7)
    assert infer_identity_config(sd) == {"arch": "iresnet50", "layers": [3, 4, 14, 3], "width": 64,
                                         "input_size": 112, "num_features": 512}


def test_weights_round_trip_through_a_file(tmp_path):
    torch.manual_seed(0)
    net = IResNet([2, 2, 2, 2], width=8, input_size=32, num_features=16).eval()
    with torch.no_grad():                               # non-trivial BN statistics
        for m in net.modules():
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    sd = {f"module.{k}": v for k, v in net.state_dict().items()}     # DataParallel prefix
    path = tmp_path / "arcface.pth"
    torch.save(sd, path)
    F = build_identity(load_identity_file(path))
    assert F.config["layers"] == [2, 2, 2, 2] and F.config["input_size"] == 32
    assert not any(p.requires_grad for p in F.parameters()) and not F.training
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        ref = torch.nn.functional.normalize(net(x), dim=1)
    assert torch.allclose(F(x), ref, atol=1e-6)
    # other input sizes are resized; embeddings are unit vectors
    assert torch.allclose(F(torch.rand(2, 3, 64, 64)).norm(dim=1), torch.ones(2), atol=1e-5)
    # gradients flow to the input (L_id trains G through the frozen F)
    xi = x.clone().requires_grad_(True)
    F(xi).sum().backward()
    assert xi.grad is not None and xi.grad.abs().sum() > 0


def test_mismatched_weights_give_clear_errors():
    net = IResNet([1, 1, 1, 1], width=8, input_size=32, num_features=16)
    sd = net.state_dict()
    cfg = {"layers": [1, 1, 1, 1], "width": 8, "input_size": 32, "num_features": 16}
    missing = {k: v for k, v in sd.items() if k != "layer2.0.conv1.weight"}
    with pytest.raises(IdentityWeightsError, match=r"1 missing, 0 unexpected keys \(missing 'layer2.0.conv1.weight'\)"):
        build_identity(missing, cfg)
    extra = dict(sd, **{"head.weight": torch.zeros(2)})
    with pytest.raises(IdentityWeightsError, match="unexpected 'head.weight'"):
        build_identity(extra, cfg)
    with pytest.raises(IdentityWeightsError, match="'fc.weight' has shape"):
        build_identity(sd, dict(cfg, num_features=8))
    with pytest.raises(IdentityWeightsError, match="not an iresnet"):
        build_identity({"conv.weight": torch.zeros(1)})


def test_arcface_margin_by_hand():
    head = ArcMarginHead(2, 3, s=10.0, m=0.5)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    emb = torch.tensor([[math.cos(0.3), math.sin(0.3)]])
    logits = head(emb, torch.tensor([0]))
    assert logits[0, 0].item() == pytest.approx(10 * math.cos(0.3 + 0.5), rel=1e-5)   # margin on the true class
    assert logits[0, 1].item() == pytest.approx(10 * math.cos(math.pi / 2 - 0.3), rel=1e-5)
    assert logits[0, 2].item() == pytest.approx(10 * math.cos(math.pi - 0.3), rel=1e-5)
