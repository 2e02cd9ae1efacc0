import json
import shutil

import pytest
import torch

from natix.errors import BackboneError
from natix.extract.backbones import hash_tensors, load_backbone


def test_transformers_directory_loads_in_eval_with_cls_pooling(tiny_backbone):
    from transformers import DINOv3ViTModel

    bb, ident = load_backbone(str(tiny_backbone), pool="cls")
    assert not bb.training and not bb.model.training
    assert ident["loader"] == "transformers" and ident["n_prefix_tokens"] == 5 and bb.dim == 32
    ref = DINOv3ViTModel.from_pretrained(tiny_backbone).eval()
    x = torch.randn(3, 3, 64, 48)
    with torch.inference_mode():
        assert torch.equal(bb(x), ref(pixel_values=x).pooler_output)


def test_cls_mean_pooling_excludes_registers(tiny_backbone):
    bb, _ = load_backbone(str(tiny_backbone), pool="cls+mean")
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        tokens = bb.tokens(x)
        out = bb(x)
    assert out.shape == (2, 64)
    assert torch.equal(out[:, :32], tokens[:, 0])
    assert torch.allclose(out[:, 32:], tokens[:, 5:].mean(1))
    assert not torch.allclose(out[:, 32:], tokens[:, 1:].mean(1))


def test_eval_mode_makes_features_deterministic(tiny_backbone):
    bb, _ = load_backbone(str(tiny_backbone))
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(bb(x), bb(x))


def test_copied_weights_keep_identity_and_one_changed_value_does_not(tiny_backbone, tmp_path):
    copy = tmp_path / "elsewhere" / "renamed-model"
    shutil.copytree(tiny_backbone, copy)
    _, a = load_backbone(str(tiny_backbone))
    _, b = load_backbone(str(copy))
    assert a == b
    from transformers import DINOv3ViTModel

    m = DINOv3ViTModel.from_pretrained(copy)
    with torch.no_grad():
        m.norm.weight[0] += 1e-3
    m.save_pretrained(copy)
    _, c = load_backbone(str(copy))
    assert c["weights_sha256"] != a["weights_sha256"] and c["arch"] == a["arch"]


def test_hash_tensors_sees_name_dtype_shape_and_value():
    t = torch.arange(6, dtype=torch.float32)
    base = hash_tensors([("w", t)])
    assert hash_tensors([("w", t.clone())]) == base
    assert hash_tensors([("v", t)]) != base
    assert hash_tensors([("w", t.double())]) != base
    assert hash_tensors([("w", t.view(2, 3))]) != base
    u = t.clone()
    u[5] = torch.nextafter(u[5], torch.tensor(100.0))
    assert hash_tensors([("w", u)]) != base
    assert hash_tensors([("w", t.to(torch.bfloat16))])  # dtypes without numpy twins hash too


@pytest.fixture(scope="module")
def tiny_timm_dir(tmp_path_factory):
    import timm
    from timm.models import save_for_hf

    torch.manual_seed(0)
    args = dict(depth=2, embed_dim=48, num_heads=2)
    model = timm.create_model("vit_small_patch16_dinov3", pretrained=False, num_classes=0, **args)
    out = tmp_path_factory.mktemp("timm") / "tiny"
    save_for_hf(model, out, model_args=args, safe_serialization=True)
    return out


def test_timm_local_dir_and_cls(tiny_timm_dir):
    bb, ident = load_backbone(f"timm:local-dir:{tiny_timm_dir}")
    assert ident["loader"] == "timm" and ident["n_prefix_tokens"] == 5 and bb.dim == 48
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(bb(x), bb.model.forward_features(x)[:, 0])


def test_timm_checkpoint_mismatch_is_a_one_line_error(tiny_timm_dir):
    with pytest.raises(BackboneError, match="does not fit the architecture"):
        load_backbone("timm:vit_small_patch16_dinov3", checkpoint=str(tiny_timm_dir / "model.safetensors"))


def _save_adapter(backbone_dir, out, *, dora=False, seed=0):
    from peft import LoraConfig, get_peft_model
    from transformers import DINOv3ViTModel

    torch.manual_seed(seed)
    model = DINOv3ViTModel.from_pretrained(backbone_dir)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False,
                     use_dora=dora)
    peft_model = get_peft_model(model, cfg)
    peft_model.save_pretrained(out)
    return peft_model.eval()


@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
def test_adapter_is_merged_and_changes_identity(tiny_backbone, tmp_path, dora):
    peft_model = _save_adapter(tiny_backbone, tmp_path / "adapter", dora=dora)
    plain, plain_ident = load_backbone(str(tiny_backbone))
    adapted, ident = load_backbone(str(tiny_backbone), adapter=str(tmp_path / "adapter"))
    assert ident["weights_sha256"] == plain_ident["weights_sha256"]  # the base weights are unchanged
    assert ident["adapter"]["config"]["use_dora"] is dora and len(ident["adapter"]["weights_sha256"]) == 64
    assert not any("lora" in n for n, _ in adapted.named_parameters())  # merged, no adapter modules left
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        expected = peft_model(pixel_values=x).pooler_output
        assert torch.allclose(adapted(x), expected, atol=1e-5)
        assert not torch.allclose(adapted(x), plain(x), atol=1e-3)


@pytest.mark.parametrize("spec, kwargs, match", [
    ("timm:not_a_model_xyz", {}, "unknown timm model"),
    ("./no/such/dir", {}, "neither a local directory"),
    ("no-slash-name", {}, "neither a local directory"),
    ("x", {"pool": "gem"}, "unknown pooling"),
])
def test_bad_backbone_specs(spec, kwargs, match):
    with pytest.raises(BackboneError, match=match):
        load_backbone(spec, **kwargs)


def test_file_as_backbone_and_non_dinov3_directory(tmp_path, tiny_backbone):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(BackboneError, match="is a file"):
        load_backbone(str(f))
    other = tmp_path / "vit"
    shutil.copytree(tiny_backbone, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["model_type"] = "vit"
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(BackboneError, match="not DINOv3"):
        load_backbone(str(other))
    with pytest.raises(BackboneError, match="no config.json|cannot load"):
        load_backbone(str(tmp_path))


def test_checkpoint_only_for_timm_and_adapter_errors(tiny_backbone, tmp_path):
    with pytest.raises(BackboneError, match="timm backbones only"):
        load_backbone(str(tiny_backbone), checkpoint="w.safetensors")
    with pytest.raises(BackboneError, match="no adapter_config.json"):
        load_backbone(str(tiny_backbone), adapter=str(tmp_path))


def test_timm_name_with_checkpoint_file(tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(1)
    ref = timm.create_model("vit_small_patch16_dinov3", pretrained=False, num_classes=0).eval()
    save_file(ref.state_dict(), tmp_path / "w.safetensors")
    torch.save({"state_dict": ref.state_dict()}, tmp_path / "w.pth")
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        expected = ref.forward_features(x)[:, 0]
    idents = []
    for f in ("w.safetensors", "w.pth"):
        bb, ident = load_backbone("timm:vit_small_patch16_dinov3", checkpoint=str(tmp_path / f))
        with torch.inference_mode():
            assert torch.equal(bb(x), expected)
        idents.append(ident)
    assert idents[0] == idents[1]
    with pytest.raises(BackboneError, match="does not exist"):
        load_backbone("timm:vit_small_patch16_dinov3", checkpoint=str(tmp_path / "missing.pth"))


@pytest.mark.parametrize("kind", ["transformers", "timm"])
def test_folding_the_normalisation_into_the_patch_embedding_is_exact(kind, tiny_backbone, tiny_timm_dir):
    from natix.extract.featurizer import fold_normalization
    from natix.extract.views import normalize

    spec = str(tiny_backbone) if kind == "transformers" else f"timm:local-dir:{tiny_timm_dir}"
    ref, _ = load_backbone(spec)
    folded, _ = load_backbone(spec)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    assert fold_normalization(folded, mean, std)
    pixels = torch.randint(0, 256, (3, 3, 48, 32), dtype=torch.uint8)
    with torch.inference_mode():
        expected = ref(normalize(pixels, mean, std))
        got = folded(pixels.float())
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    conv = (folded.model.embeddings.patch_embeddings if kind == "transformers" else folded.model.patch_embed.proj)
    ref_conv = (ref.model.embeddings.patch_embeddings if kind == "transformers" else ref.model.patch_embed.proj)
    torch.testing.assert_close(conv.weight * 255 * torch.tensor(std).view(1, 3, 1, 1), ref_conv.weight)


# --------------------------------------------------------------------------- Hub ids without a Hub




@pytest.mark.parametrize("offline", [True, False], ids=["HF_HUB_OFFLINE", "unreachable"])
def test_an_uncached_hub_id_fails_fast_once_naming_the_backbone_option(dead_hub, monkeypatch, capfd, offline):
    import time

    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(BackboneError, match="neither a local directory nor in the Hub cache, and "
                                            f"{'HF_HUB_OFFLINE is set' if offline else 'the Hub .* is unreachable'}"
                                            ".*: pass --backbone PATH") as info:
        load_backbone("natix-tests/no-such-model")
    assert time.monotonic() - start < 10 and "\n" not in str(info.value)
    assert "Retrying" not in capfd.readouterr().err  # one try, no back-off


@pytest.mark.parametrize("spec, expected", [
    ("models/tiny", ("", "models/tiny")),
    ("/abs/model", ("", "/abs/model")),
    ("transformers:models/tiny", ("transformers:", "models/tiny")),
    ("facebook/dinov3-vitl16-pretrain-lvd1689m", ("", "facebook/dinov3-vitl16-pretrain-lvd1689m")),
    ("timm:local-dir:models/t", ("timm:local-dir:", "models/t")),
    ("timm:hf-hub:org/name", None),
    ("timm:vit_small_patch16_dinov3", None),
])
def test_spec_path_names_the_local_path_inside_a_spec(spec, expected):
    from natix.extract.backbones import spec_path

    assert spec_path(spec) == expected
    if expected:
        assert expected[0] + expected[1] == spec
