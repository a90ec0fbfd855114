"""Image spec: rendered Dockerfiles (golden), content tags, wheel selection, the sha256 cache."""

import io
import os
import tarfile
import time
from dataclasses import replace
from pathlib import Path

import pytest

from orchestrator.errors import ImageError
from orchestrator.images.build import context_chunks
from orchestrator.images.profiles import load_profile
from orchestrator.images.spec import (
    Sha256Cache,
    file_sha256,
    find_wheels,
    make_image_spec,
    render_dockerfile,
    workload_files,
)
from tests.support.golden import check_golden

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "golden" / "images"
BASE_ID = "sha256:" + "ab" * 32


def assert_golden(text: str, name: str) -> None:
    check_golden(GOLDEN / name, text)


@pytest.mark.parametrize("vendor", ["cpu", "metax-c500", "nvidia"])
def test_rendered_dockerfile_matches_golden(vendor):
    assert_golden(render_dockerfile(load_profile(vendor)), f"{vendor}.Dockerfile")


def test_final_stage_copies_the_venv_not_the_wheels():
    text = render_dockerfile(load_profile("metax-c500"))
    system, builder, final = text.split("\nFROM ")[1:]
    assert system.startswith("metax/c500-pytorch-base:2.19.0.6-ubuntu20.04 AS system\n")
    assert "wheels" not in system
    assert builder.startswith("system AS builder\n") and final.startswith("system\n")
    assert "COPY wheels/" in builder and "--no-index" in builder
    assert "wheels" not in final
    assert "COPY --from=builder /opt/venv /opt/venv" in final
    assert "/usr/bin/python3.8 -m venv --system-site-packages /opt/venv" in builder


@pytest.fixture
def wheel_dir(tmp_path):
    d = tmp_path / "wheels"
    d.mkdir()
    for name, body in [
        ("torch-2.14.1-cp311-cp311-manylinux_2_28_x86_64.whl", b"torch bytes"),
        ("torchvision-0.29.1-cp311-cp311-manylinux_2_28_x86_64.whl", b"vision bytes"),
        ("pycocotools-2.0.11-cp311-cp311-manylinux_2_17_x86_64.whl", b"coco bytes"),
    ]:
        (d / name).write_bytes(body)
    return d


@pytest.fixture
def workload_dir(tmp_path):
    root = tmp_path / "src" / "workload"
    (root / "faster_rcnn" / "__pycache__").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "faster_rcnn" / "__init__.py").write_text("")
    (root / "faster_rcnn" / "train.py").write_text("print('train')\n")
    (root / "faster_rcnn" / "__pycache__" / "train.cpython-311.pyc").write_bytes(b"junk")
    (root / "faster_rcnn" / "notes.md").write_text("not shipped")
    return root


def _spec(wheel_dir, workload_dir, tmp_path, base_id=BASE_ID, profile=None):
    return make_image_spec(
        profile or load_profile("cpu"),
        [wheel_dir],
        base_id,
        workload_dir=workload_dir,
        cache=Sha256Cache(tmp_path / "cache.json"),
    )


def test_workload_files_are_the_shipped_sources_only(workload_dir):
    names = [rel for rel, _ in workload_files(workload_dir)]
    assert names == [
        "workload/__init__.py",
        "workload/faster_rcnn/__init__.py",
        "workload/faster_rcnn/train.py",
    ]


def test_default_workload_is_this_checkouts_package():
    names = [rel for rel, _ in workload_files()]
    assert "workload/faster_rcnn/result_format.py" in names


def test_tag_is_stable_and_content_addressed(wheel_dir, workload_dir, tmp_path):
    first = _spec(wheel_dir, workload_dir, tmp_path)
    again = _spec(wheel_dir, workload_dir, tmp_path)
    assert first.tag == again.tag
    assert first.tag.startswith("orchestrator/cpu:") and len(first.tag.split(":")[1]) == 16
    # Touching a file without changing it keeps the tag.
    os.utime(workload_dir / "faster_rcnn" / "train.py", (time.time() + 5, time.time() + 5))
    assert _spec(wheel_dir, workload_dir, tmp_path).tag == first.tag


def test_each_input_changes_the_tag(wheel_dir, workload_dir, tmp_path):
    tags = {_spec(wheel_dir, workload_dir, tmp_path).tag}
    (workload_dir / "faster_rcnn" / "train.py").write_text("print('train v2')\n")
    tags.add(_spec(wheel_dir, workload_dir, tmp_path).tag)
    (wheel_dir / "pycocotools-2.0.11-cp311-cp311-manylinux_2_17_x86_64.whl").write_bytes(
        b"rebuilt coco"
    )
    tags.add(_spec(wheel_dir, workload_dir, tmp_path).tag)
    tags.add(_spec(wheel_dir, workload_dir, tmp_path, base_id="sha256:" + "cd" * 32).tag)
    spec = _spec(wheel_dir, workload_dir, tmp_path)
    tags.add(replace(spec, dockerfile=spec.dockerfile + "# changed template\n").tag)
    (workload_dir / "faster_rcnn" / "extra.py").write_text("")
    tags.add(_spec(wheel_dir, workload_dir, tmp_path).tag)
    assert len(tags) == 6


def test_unresolved_base_is_visible(wheel_dir, workload_dir, tmp_path):
    spec = _spec(wheel_dir, workload_dir, tmp_path, base_id=None)
    assert not spec.resolved
    assert spec.tag != _spec(wheel_dir, workload_dir, tmp_path).tag


def test_vendor_wheels_are_picked_out_for_the_environment_block(wheel_dir, workload_dir, tmp_path):
    spec = _spec(wheel_dir, workload_dir, tmp_path)
    assert [w.name for w in spec.vendor_wheel_files()] == [
        "torch-2.14.1-cp311-cp311-manylinux_2_28_x86_64.whl",
        "torchvision-0.29.1-cp311-cp311-manylinux_2_28_x86_64.whl",
    ]
    torch = spec.vendor_wheel_files()[0]
    assert torch.sha256 == file_sha256(wheel_dir / torch.name)


def test_missing_vendor_wheel_is_named(wheel_dir):
    (wheel_dir / "torch-2.14.1-cp311-cp311-manylinux_2_28_x86_64.whl").unlink()
    with pytest.raises(ImageError) as err:
        find_wheels([wheel_dir], load_profile("cpu"))
    assert "torch-2.14.1-*.whl" in err.value.one_line() and "--wheels" in err.value.one_line()


def test_wheel_sources_may_be_files_and_dirs_but_not_duplicates(wheel_dir, tmp_path):
    profile = load_profile("cpu")
    other = tmp_path / "other"
    other.mkdir()
    extra = other / "extra-1.0-py3-none-any.whl"
    extra.write_bytes(b"x")
    names = [p.name for p in find_wheels([wheel_dir, extra], profile)]
    assert "extra-1.0-py3-none-any.whl" in names and len(names) == 4
    (other / "pycocotools-2.0.11-cp311-cp311-manylinux_2_17_x86_64.whl").write_bytes(b"another")
    with pytest.raises(ImageError, match="given twice"):
        find_wheels([wheel_dir, other], profile)
    with pytest.raises(ImageError, match="does not exist"):
        find_wheels([tmp_path / "nope"], profile)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ImageError, match="neither a .whl file nor a directory"):
        find_wheels([tmp_path / "notes.txt"], profile)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ImageError, match="no wheels found"):
        find_wheels([empty], profile)


def test_sha256_cache_skips_unchanged_files_and_notices_changes(tmp_path):
    wheel = tmp_path / "a-1-py3-none-any.whl"
    wheel.write_bytes(b"one")
    cache_file = tmp_path / "cache.json"
    first = Sha256Cache(cache_file).hashed(wheel.name, wheel)
    Sha256Cache(cache_file).save()  # nothing dirty: nothing written over
    cache = Sha256Cache(cache_file)
    cache.hashed(wheel.name, wheel)
    cache.save()
    assert cache_file.is_file()
    # Same size and mtime: the cached digest is used (proved by planting a wrong one).
    text = cache_file.read_text().replace(first.sha256, "f" * 64)
    cache_file.write_text(text)
    assert Sha256Cache(cache_file).hashed(wheel.name, wheel).sha256 == "f" * 64
    # A changed file (new mtime) is hashed again.
    wheel.write_bytes(b"two")
    os.utime(wheel, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    assert Sha256Cache(cache_file).hashed(wheel.name, wheel).sha256 == file_sha256(wheel)
    cache_file.write_text("{not json")
    assert Sha256Cache(cache_file).hashed(wheel.name, wheel).sha256 == file_sha256(wheel)


def test_unknown_placeholder_is_an_error(tmp_path):
    profile = load_profile("cpu")
    template = tmp_path / "T"
    template.write_text("FROM {{base_image}}\nRUN {{pythn}}\n")
    with pytest.raises(ImageError, match=r"unknown placeholder \{\{pythn\}\}"):
        render_dockerfile(replace(profile, template_path=template))


def test_build_context_holds_only_dockerfile_wheels_and_workload(wheel_dir, workload_dir, tmp_path):
    spec = _spec(wheel_dir, workload_dir, tmp_path)
    sent = []
    data = b"".join(context_chunks(spec, lambda done, total: sent.append((done, total))))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert set(members) == {
            "Dockerfile",
            *(f"wheels/{w.name}" for w in spec.wheels),
            "workload/__init__.py",
            "workload/faster_rcnn/__init__.py",
            "workload/faster_rcnn/train.py",
        }
        assert tar.extractfile("Dockerfile").read().decode() == spec.dockerfile
        assert tar.extractfile("workload/faster_rcnn/train.py").read() == b"print('train')\n"
        assert len(spec.wheels) == 3 and len(members) == 7
        assert all(m.mtime == 0 and m.uid == 0 for m in members.values())
    assert sent[-1][0] == len(data) and sent[-1][1] == spec.context_bytes


def test_abandoned_build_context_stops_its_reader(wheel_dir, workload_dir, tmp_path):
    import threading

    spec = _spec(wheel_dir, workload_dir, tmp_path)
    before = threading.active_count()
    stream = context_chunks(spec)
    next(stream)
    stream.close()
    assert threading.active_count() == before
