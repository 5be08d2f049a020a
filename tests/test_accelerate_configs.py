"""The packaged accelerate configs: accelerate reads each one as intended, `--accelerate_config NAME` finds them from
a source checkout and from a wheel, and the launch scripts build the right command.

No GPU and no deepspeed here: the configs go through accelerate's own config loader and `accelerate launch`'s
argument validation; the FSDP ones also build accelerate's FSDP plugin from the environment the launcher sets, and
wrap the tiny GPT-2 / BART / T5 models; the ZeRO ones are checked as parsed YAML only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DistributedType

from hf_seqobj.cli import ACCELERATE_CONFIGS, ConfigError, resolve_accelerate_config
from hf_seqobj.metrics import METRIC_MODULES


ROOT = Path(__file__).resolve().parents[1]
EXPECTED = {
    "cpu_2proc": DistributedType.MULTI_GPU,  # torch.distributed.run processes that train on the CPU (gloo)
    "single_gpu": DistributedType.NO,
    "multi_gpu": DistributedType.MULTI_GPU,
    "fsdp": DistributedType.FSDP,
    "fsdp1": DistributedType.FSDP,
    "zero2": DistributedType.DEEPSPEED,
    "zero3": DistributedType.DEEPSPEED,
}


def _launch_args(path: Path):
    """`accelerate launch --config_file PATH train.py`'s arguments after accelerate's own validation."""
    args = launch_command_parser().parse_args(["--config_file", str(path), "train.py"])
    args, defaults, _ = _validate_launch_command(args)
    return args, defaults


def test_the_packaged_configs_are_the_expected_ones():
    assert sorted(path.stem for path in ACCELERATE_CONFIGS.glob("*.yaml")) == sorted(EXPECTED)
    # The source checkout's configs/accelerate is the same folder (a link).
    assert (ROOT / "configs" / "accelerate").resolve() == ACCELERATE_CONFIGS.resolve()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_config_loads_with_accelerate_and_has_its_distributed_type(name):
    path = resolve_accelerate_config(name)
    assert path == ACCELERATE_CONFIGS / f"{name}.yaml"
    config = load_config_from_file(str(path))
    assert config.distributed_type == EXPECTED[name]
    assert config.num_machines == 1
    args, _ = _launch_args(path)  # what `accelerate launch` accepts (no GPU needed to validate)
    assert args.use_fsdp == (EXPECTED[name] == DistributedType.FSDP)
    assert args.use_deepspeed == (EXPECTED[name] == DistributedType.DEEPSPEED)
    expected_processes = {"single_gpu": 1, "cpu_2proc": 2}.get(name, 8)
    assert args.num_processes == expected_processes


@pytest.mark.parametrize("name", ["fsdp", "fsdp1", "zero2", "zero3"])
def test_nested_settings_are_accelerate_launch_arguments(name):
    """accelerate copies fsdp_config / deepspeed_config keys onto its launch arguments without checking them, so a
    misspelt key would be silently ignored: every key must be an argument of `accelerate launch`."""
    raw = yaml.safe_load(resolve_accelerate_config(name).read_text())
    known = {action.dest for action in launch_command_parser()._actions}
    nested = raw.get("fsdp_config") or raw.get("deepspeed_config")
    assert nested, f"{name}.yaml has no fsdp_config / deepspeed_config"
    for key in nested:
        dest = key if key.startswith("fsdp") or "deepspeed_config" in raw else f"fsdp_{key}"
        assert dest in known, f"{name}.yaml: {key!r} is no `accelerate launch` argument"


@pytest.mark.parametrize("name", ["fsdp", "fsdp1"])
def test_fsdp_configs_shard_fully_and_wrap_each_architectures_blocks(name, tiny_checkpoints, monkeypatch):
    """The launcher's environment builds accelerate's FSDP plugin with full sharding, the full state dict for
    save_model, and a transformer-based wrap that finds each architecture's blocks (its `_no_split_modules`)."""
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env
    from torch.distributed.fsdp import ShardingStrategy, StateDictType

    from hf_seqobj.modeling import load_model_and_tokenizer

    args, _ = _launch_args(resolve_accelerate_config(name))
    assert args.mixed_precision == "bf16"
    env = prepare_multi_gpu_env(args)
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP"
    assert env["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "false"
    if name == "fsdp1":
        assert env["FSDP_USE_ORIG_PARAMS"] == "true" and env["FSDP_SYNC_MODULE_STATES"] == "true"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    # sync_module_states makes the plugin ask for the current GPU; it is checked above, and off here (no GPU).
    monkeypatch.setenv("FSDP_SYNC_MODULE_STATES", "false")
    blocks = {"gpt2": {"GPT2Block"}, "bart": {"BartEncoderLayer", "BartDecoderLayer"}, "t5": {"T5Block"}}
    for arch, names in blocks.items():
        plugin = FullyShardedDataParallelPlugin()
        assert plugin.state_dict_type == StateDictType.FULL_STATE_DICT
        if name == "fsdp":
            assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
        else:
            assert plugin.fsdp_version == 1 and plugin.sharding_strategy == ShardingStrategy.FULL_SHARD
        model, _ = load_model_and_tokenizer(tiny_checkpoints[arch])
        plugin.set_auto_wrap_policy(model)
        wrapped = plugin.auto_wrap_policy.keywords["transformer_layer_cls"]
        assert {cls.__name__ for cls in wrapped} == names, arch


@pytest.mark.parametrize(("name", "stage"), [("zero2", 2), ("zero3", 3)])
def test_zero_configs(name, stage):
    """ZeRO-2 / ZeRO-3 with bf16 (read as YAML and validated by `accelerate launch`; deepspeed is not needed)."""
    raw = yaml.safe_load(resolve_accelerate_config(name).read_text())
    assert raw["mixed_precision"] == "bf16"
    deepspeed = raw["deepspeed_config"]
    assert deepspeed["zero_stage"] == stage
    assert deepspeed["offload_optimizer_device"] == deepspeed["offload_param_device"] == "none"
    # ZeRO-3 shards parameters at load time and gathers a 16-bit model for save_model (from_pretrained-loadable).
    assert deepspeed["zero3_init_flag"] is (stage == 3)
    assert deepspeed.get("zero3_save_16bit_model", False) is (stage == 3)
    args, _ = _launch_args(resolve_accelerate_config(name))
    assert args.use_deepspeed and int(args.zero_stage) == stage and args.mixed_precision == "bf16"


def test_unknown_names_are_errors_that_list_the_packaged_configs():
    with pytest.raises(ConfigError, match="zero4.*fsdp.*zero3"):
        resolve_accelerate_config("zero4")


def test_a_wheel_carries_the_configs(tmp_path):
    """Built from the project's files, the wheel holds every config in the package folder where `hf_seqobj.cli.launch`
    looks them up, and every packaged `evaluate` module script (hf_seqobj.metrics), and requires `evaluate`."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "hf_seqobj", source / "hf_seqobj", ignore=shutil.ignore_patterns("__pycache__"))
    build = "from setuptools import build_meta; print(build_meta.build_wheel('dist'))"
    result = subprocess.run([sys.executable, "-c", build], cwd=source, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    wheel = source / "dist" / result.stdout.strip().splitlines()[-1]
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read(next(name for name in names if name.endswith(".dist-info/METADATA"))).decode()
    assert "hf_seqobj/cli/launch.py" in names
    for module in METRIC_MODULES:
        assert f"hf_seqobj/metrics/modules/{module}/{module}.py" in names, module
    assert "Requires-Dist: evaluate>=" in metadata
    for config in EXPECTED:
        assert f"hf_seqobj/accelerate_configs/{config}.yaml" in names, config
    launch = Path(sys.modules["hf_seqobj.cli.launch"].__file__).resolve()
    assert ACCELERATE_CONFIGS == launch.parents[1] / "accelerate_configs"


def _run_launch_script(tmp_path: Path, script: str, *args: str, gpus: int = 0, env: dict | None = None) -> list[str]:
    """Runs a launch script with a stand-in `hf-seqobj` (prints its arguments) and `nvidia-smi` (lists `gpus`)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "hf-seqobj"
    fake.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$PWD" "$@"\n')
    fake.chmod(0o755)
    if gpus:
        smi = bin_dir / "nvidia-smi"
        lines = "".join(f"echo 'GPU {i}: NVIDIA H100 (UUID: GPU-{i})'\n" for i in range(gpus))
        smi.write_text(f"#!/usr/bin/env bash\n{lines}")
        smi.chmod(0o755)
    environment = {k: v for k, v in os.environ.items() if k not in ("NUM_PROCESSES", "ARCH")}
    environment["PATH"] = f"{bin_dir}:/usr/bin:/bin"
    environment.update(env or {})
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / script), *args],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_launch_scripts_build_the_train_command(tmp_path):
    cwd, *argv = _run_launch_script(tmp_path, "launch_ner.sh", "zero3", "--objective", "dagger", gpus=4)
    assert Path(cwd) == ROOT  # the task configs' data paths are relative to the repository root
    assert argv == [
        "train",
        "configs/ner_conll2003_bart.yaml",
        "--accelerate_config",
        "zero3",
        "--num_processes",
        "4",
        "--bf16",
        "true",
        "--objective",
        "dagger",
    ]
    _, *argv = _run_launch_script(tmp_path, "launch_translation.sh", "multi_gpu", env={"ARCH": "bart"}, gpus=2)
    assert argv == [
        "train",
        "configs/translation_multi30k_bart.yaml",
        "--accelerate_config",
        "multi_gpu",
        "--num_processes",
        "2",
    ]
    _, *argv = _run_launch_script(tmp_path, "launch_ner.sh", "single_gpu", env={"ARCH": "t5"}, gpus=2)
    assert argv == ["train", "configs/ner_conll2003_t5.yaml", "--accelerate_config", "single_gpu"]
    _, *argv = _run_launch_script(tmp_path, "launch_ner.sh", "cpu_2proc", "--max_steps", "5")
    assert argv[3:] == ["cpu_2proc", "--use_cpu", "true", "--max_steps", "5"]
    _, *argv = _run_launch_script(tmp_path, "launch_arithmetic.sh", "cpu_2proc", "--max_steps", "5")
    assert argv[:2] == ["train", "configs/arithmetic_gpt2.yaml"]
    assert argv[3:] == ["cpu_2proc", "--use_cpu", "true", "--max_steps", "5"]
    # NUM_PROCESSES wins over the GPU count; a config file path (relative to the caller) is made absolute.
    (tmp_path / "mine.yaml").write_text("distributed_type: MULTI_GPU\n")
    _, *argv = _run_launch_script(tmp_path, "launch_ner.sh", "mine.yaml", env={"NUM_PROCESSES": "3"}, gpus=8)
    assert argv[2:6] == ["--accelerate_config", str(tmp_path / "mine.yaml"), "--num_processes", "3"]


def test_every_task_config_named_by_the_launch_scripts_exists():
    for arch in ("gpt2", "bart", "t5"):
        assert (ROOT / "configs" / f"ner_conll2003_{arch}.yaml").is_file()
        assert (ROOT / "configs" / f"translation_multi30k_{arch}.yaml").is_file()
