"""Fuzzing checkpoint configs and safetensors headers (issue 15 item 5): any mutation -- a JSON value of
the wrong type or a hostile size at any key, a missing or an extra key, a truncated or bit-flipped
weights file -- ends in ``CheckpointConfigError`` (or ``FileNotFoundError`` for a file that is not
there) or in a correct load; never another exception, a hang or runaway memory."""
import copy
import json
import shutil
import signal
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medrecon.models.checkpoint import load_checkpoint, save_checkpoint
from medrecon.models.config_schema import Checker, CheckpointConfigError, unet, validate_ddgan
from medrecon.models.network_size import MAX_PARAMETERS, check_size, generator_size, unet_size
from medrecon.models.networks import build_unet, preset
from medrecon.models.schedules import VPSchedule, make_betas
from medrecon.models.wrapper import DiffusionModel

pytestmark = pytest.mark.usefixtures("one_thread")
CLEAN = (CheckpointConfigError, FileNotFoundError)
SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                            HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.sampled_from([0, -1, 1, 3, 4096, 10 ** 6, 10 ** 12])
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
    | st.sampled_from(["../model.safetensors", "/etc/passwd", "model.safetensors", "vp", "ve", "eps", "v"]),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
hostile_lists = st.sampled_from([[4096] * 4, [16384] * 8, [8] * 9, [10 ** 6], [], [0], [16, 32, 64]])


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    cfg = preset("tiny")
    model = DiffusionModel(build_unet(cfg, seed=0), VPSchedule(make_betas("linear", 20)), "eps", network_config=cfg)
    return save_checkpoint(tmp_path_factory.mktemp("fuzz") / "ck", model, cfg, ema=model.net)


def _paths(d, prefix=()):
    """Every key path into a nested config (dicts and lists)."""
    items = d.items() if isinstance(d, dict) else enumerate(d) if isinstance(d, list) else ()
    for k, v in items:
        yield prefix + (k,)
        if not (isinstance(v, list) and len(v) > 8):  # not into every beta
            yield from _paths(v, prefix + (k,))


def _mutate(cfg, path, op, value):
    parent = cfg
    for k in path[:-1]:
        parent = parent[k]
    if op == "set":
        parent[path[-1]] = value
    elif op == "delete":
        del parent[path[-1]]
    elif isinstance(parent, dict):
        parent[f"unknown_{len(parent)}"] = value


class _Timeout(Exception):
    pass


def _guarded(fn):
    """Run ``fn`` with a 60 s alarm: a hang fails the example (``_Timeout`` is not a clean error)."""
    def alarm(*_):
        raise _Timeout("checkpoint loading did not finish within 60 s")
    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(60)
    try:
        return fn()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _load_or_clean_error(d, expect_weights=None):
    try:
        ck = _guarded(lambda: load_checkpoint(d))
    except CLEAN as exc:
        assert "\n" not in str(exc) and str(exc), exc
        return
    if expect_weights is not None:  # loaded: the weights are what the file holds
        got = ck.model.net.state_dict()
        assert all(torch.equal(got[k], expect_weights[k]) for k in got)


@SETTINGS
@given(data=st.data())
def test_fuzz_config_values(base, data):
    cfg = json.loads((base / "config.json").read_text())
    path = data.draw(st.sampled_from(sorted(_paths(cfg), key=str)))
    op = data.draw(st.sampled_from(["set", "set", "delete", "add"]))
    value = data.draw(hostile_lists if path[-1] in ("channels", "num_res_blocks", "betas") else json_values)
    _mutate(cfg, path, op, value)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "ck"
        shutil.copytree(base, d)
        (d / "config.json").write_text(json.dumps(cfg))
        _load_or_clean_error(d)


@SETTINGS
@given(data=st.data())
def test_fuzz_weights_files(base, data):
    """Truncations anywhere and bit flips in the 8-byte length or the JSON header; a flip in the data
    region must load exactly the flipped bytes (the file is what it is), anything else a clean error."""
    from safetensors.torch import load_file

    name = data.draw(st.sampled_from(["model.safetensors", "ema.safetensors"]))
    raw = bytearray((base / name).read_bytes())
    header_end = 8 + int.from_bytes(raw[:8], "little")
    if data.draw(st.booleans()):
        raw = raw[:data.draw(st.integers(0, len(raw) - 1))]
    else:
        for _ in range(data.draw(st.integers(1, 3))):
            pos = data.draw(st.integers(0, min(len(raw), header_end + 64) - 1))
            raw[pos] ^= 1 << data.draw(st.integers(0, 7))
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "ck"
        shutil.copytree(base, d)
        (d / name).write_bytes(bytes(raw))
        expect = None
        if name == "model.safetensors":
            try:
                expect = load_file(str(d / name))
            except Exception:
                expect = None
        _load_or_clean_error(d, expect)


def _accepted_configs_build(check, build):
    try:
        size = check()
        check_size(size, "fuzz", CheckpointConfigError)
    except CheckpointConfigError:
        return
    assert size.params <= MAX_PARAMETERS
    with torch.device("meta"):  # a config the schema and the cap accept always builds
        n = sum(v.numel() for v in build().state_dict().values())
    assert n == size.params


@SETTINGS
@given(d=st.fixed_dictionaries({}, optional={
    "channels": st.lists(st.sampled_from([4, 8, 12, 16, 24, 32]), min_size=1, max_size=3) | hostile_lists | json_values,
    "attention_levels": st.lists(st.booleans(), min_size=1, max_size=3) | json_values,
    "num_res_blocks": st.integers(0, 3) | st.lists(st.integers(1, 2), min_size=1, max_size=3) | json_values,
    "norm_num_groups": st.sampled_from([0, 1, 2, 4, 8, 3]) | json_values,
    "num_head_channels": st.sampled_from([0, 1, 4, 8, 16, 5]) | json_values,
    "in_channels": st.integers(-1, 3), "out_channels": st.integers(0, 3), "spatial_dims": st.integers(1, 4),
    "resblock_updown": st.booleans() | json_values, "norm_eps": st.floats() | json_values}))
def test_fuzz_unet_and_ddgan_configs_build_when_accepted(d):
    """The schema alone: a U-Net / DDGAN config it accepts (and the size cap passes) builds on the meta
    device with exactly the computed parameter count; anything else is a clean error."""
    from medrecon.models.ddgan import Generator

    _accepted_configs_build(lambda: unet_size(unet(Checker("fuzz"), copy.deepcopy(d), "network.config")),
                            lambda: build_unet(unet(Checker("fuzz"), copy.deepcopy(d), "network.config")))
    meta = {"format": "medrecon-ddgan", "version": 1, "config": {"unet": d, "d_channels": [8]},
            "files": {"generator": "g.safetensors", "discriminator": "d.safetensors"}}
    _accepted_configs_build(lambda: generator_size(validate_ddgan(copy.deepcopy(meta), "fuzz")[0]),
                            lambda: Generator(validate_ddgan(copy.deepcopy(meta), "fuzz")[0]))


def _status_mb(key):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key)) / 1024


@pytest.fixture(scope="module", autouse=True)
def peak_reset():
    """Reset the peak RSS (VmHWM) when this module starts; yields the RSS at that moment."""
    if not Path("/proc/self/clear_refs").exists():
        yield None
        return
    Path("/proc/self/clear_refs").write_text("5")
    yield _status_mb("VmRSS:")


def test_fuzzing_kept_memory_bounded(peak_reset):
    """Runs after the fuzzers above: the peak RSS of this module stayed within 1 GB of where it started
    (``channels: [4096]*4`` used to allocate 23 GB, ``num_res_blocks: 10**6`` ran for a minute)."""
    if peak_reset is None:
        pytest.skip("Linux /proc needed to reset the peak RSS")
    grown = _status_mb("VmHWM:") - peak_reset
    assert grown < 1024, f"peak RSS grew by {grown:.0f} MB while fuzzing"
