"""The detector: torchvision's fasterrcnn_resnet50_fpn, backbone from a local file, no download."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops.misc import FrozenBatchNorm2d

from workload.faster_rcnn.errors import WeightsError
from workload.faster_rcnn.model import build_model, load_backbone_weights, read_backbone_weights


@pytest.fixture(scope="module")
def frozen_body():
    """A bare FrozenBatchNorm2d ResNet-50 for the loading checks (one build per module)."""
    from torchvision.models import resnet50

    return resnet50(norm_layer=FrozenBatchNorm2d)


def _trainable_prefixes(model):
    body = model.backbone.body
    return {name.split(".")[0] for name, p in body.named_parameters() if p.requires_grad}


def test_with_backbone_weights_frozen_bn_and_three_trainable_layers(backbone_checkpoint):
    model, layers = build_model(str(backbone_checkpoint), 91, None, 800, 1333)
    state = torch.load(backbone_checkpoint, weights_only=True)
    body = model.backbone.body
    assert layers == 3
    assert _trainable_prefixes(model) == {"layer2", "layer3", "layer4"}
    assert isinstance(body.bn1, FrozenBatchNorm2d)
    assert torch.equal(body.conv1.weight, state["conv1.weight"])
    assert torch.equal(body.layer3[0].bn1.running_var, state["layer3.0.bn1.running_var"])
    assert model.roi_heads.box_predictor.cls_score.out_features == 91
    assert (model.transform.min_size, model.transform.max_size) == ((800,), 1333)


def test_from_scratch_trains_everything_with_batchnorm():
    model, layers = build_model(None, 4, 3, 64, 96, box_batch_size_per_image=64)
    assert layers == 5  # like torchvision: no pretrained backbone -> all layers trainable
    assert _trainable_prefixes(model) == {"conv1", "bn1", "layer1", "layer2", "layer3", "layer4"}
    assert isinstance(model.backbone.body.bn1, torch.nn.BatchNorm2d)
    assert model.roi_heads.fg_bg_sampler.batch_size_per_image == 64


def test_trainable_layers_zero_freezes_the_body(backbone_checkpoint):
    model, layers = build_model(str(backbone_checkpoint), 91, 0, 64, 64)
    assert layers == 0 and _trainable_prefixes(model) == set()
    assert any(p.requires_grad for p in model.backbone.fpn.parameters())


def test_wrapped_checkpoint_is_accepted(tmp_path, backbone_checkpoint, frozen_body):
    state = torch.load(backbone_checkpoint, weights_only=True)
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, path)
    assert read_backbone_weights(str(path)).keys() == {"module." + k for k in state}
    load_backbone_weights(frozen_body, str(path))
    assert torch.equal(frozen_body.fc.weight, state["fc.weight"])


def test_missing_weights_file(tmp_path, frozen_body):
    with pytest.raises(WeightsError) as info:
        load_backbone_weights(frozen_body, str(tmp_path / "resnet50.pth"))
    assert "resnet50.pth does not exist" in info.value.message
    assert "--backbone-weights none" in info.value.remedy


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("hello")
    with pytest.raises(WeightsError) as info:
        read_backbone_weights(str(path))
    assert info.value.message.startswith(f"{path} is not a PyTorch checkpoint")


def test_wrong_architecture(tmp_path, frozen_body):
    from torchvision.models import resnet18

    path = tmp_path / "resnet18.pth"
    torch.save(resnet18().state_dict(), path)
    with pytest.raises(WeightsError) as info:
        load_backbone_weights(frozen_body, str(path))
    assert "is not a ResNet-50 checkpoint" in info.value.message


def test_wrong_shape(tmp_path, backbone_checkpoint, frozen_body):
    state = torch.load(backbone_checkpoint, weights_only=True)
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError) as info:
        load_backbone_weights(frozen_body, str(path))
    assert (
        "conv1.weight has shape (64, 3, 3, 3), ResNet-50 needs (64, 3, 7, 7)" in info.value.message
    )
