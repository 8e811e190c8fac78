"""One device vocabulary and one rank-0 rule: ``--device`` is resolved once into ``"cpu"``/``"cuda"`` (DALI's and
torch's spellings derived from it), and "is this rank 0 of the job?" has one answer, the one the launch uses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dino_pipe import distributed as D
from dino_pipe.device import check_device, dali_backend, dali_decoder, device_choice, resolve_device, torch_device
from dino_pipe.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def yes() -> bool:
    return True


def no() -> bool:
    return False


def test_a_device_name_resolves_once():
    assert resolve_device("auto", has_cuda=yes) == "cuda" and resolve_device("auto", has_cuda=no) == "cpu"
    assert resolve_device("cpu", has_cuda=yes) == "cpu"
    assert resolve_device("cuda", has_cuda=yes) == "cuda"
    assert resolve_device("gpu", has_cuda=yes) == "cuda"  # what verify and bench loader took before
    with pytest.raises(UserError) as e:
        resolve_device("cuda", has_cuda=no)
    assert str(e.value) == "--device cuda: no CUDA device is visible here; use --device cpu"
    for bad in ("mixed", "GPU", "", "tpu"):
        with pytest.raises(UserError, match="use auto, cpu or cuda"):
            resolve_device(bad, has_cuda=yes)
    assert device_choice("auto") == "auto" and device_choice("gpu") == "cuda"


def test_each_library_spelling_comes_from_the_one_device():
    assert (dali_backend("cuda"), dali_decoder("cuda")) == ("gpu", "mixed")
    assert (dali_backend("cpu"), dali_decoder("cpu")) == ("cpu", "cpu")
    assert str(torch_device("cuda", 3)) == "cuda:3" and str(torch_device("cpu", 3)) == "cpu"
    assert D.DistEnv(device="cpu", local_rank=2).torch_device().type == "cpu"
    for internal_only in ("gpu", "mixed", "auto"):  # below the command line only "cpu" and "cuda" travel
        with pytest.raises(UserError):
            check_device(internal_only)


def test_the_loaders_speak_the_one_device(tiny_shardset):
    from dino_pipe.config import DataConfig
    from dino_pipe.data.loader import ViewLoader
    from dino_pipe.data.synthetic import SyntheticViewLoader

    assert ViewLoader(tiny_shardset, DataConfig(batch_size=4)).describe()["device"] == "cpu"
    assert SyntheticViewLoader(DataConfig(), device="cpu").device.type == "cpu"
    with pytest.raises(UserError, match="not one of cpu, cuda"):
        ViewLoader(tiny_shardset, DataConfig(batch_size=4), device="gpu")


TORCHRUN = {"WORLD_SIZE": "4", "LOCAL_RANK": "0", "MASTER_ADDR": "node0", "MASTER_PORT": "1234"}
SLURM = {"SLURM_NTASKS": "8", "SLURM_LOCALID": "0", "SLURM_JOB_NODELIST": "node0", "SLURM_JOB_ID": "7"}


@pytest.mark.parametrize("environ, main", [
    ({}, True),  # a local run: the launcher (rank 0 itself, or the parent of the spawned ranks)
    ({**TORCHRUN, "RANK": "0"}, True),
    ({**TORCHRUN, "RANK": "2"}, False),
    ({**SLURM, "SLURM_PROCID": "0"}, True),
    ({**SLURM, "SLURM_PROCID": "5"}, False),
    ({"SLURM_NTASKS": "1", "SLURM_PROCID": "0"}, True),  # an interactive allocation: a local run
    ({**TORCHRUN, "RANK": "1", **SLURM, "SLURM_PROCID": "0"}, False),  # torchrun inside SLURM: torchrun's rank
    ({**TORCHRUN, "RANK": "0", **SLURM, "SLURM_PROCID": "3"}, True),
])
def test_one_rank0_rule_the_same_as_the_launch(environ, main):
    assert D.is_main_process(environ) is main
    env = D.launched_env(0, environ)
    assert main is (env is None or env.rank == 0)


def test_the_rank0_rule_reads_the_environment(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_NTASKS", "SLURM_PROCID"):
        monkeypatch.delenv(key, raising=False)
    assert D.is_main_process()
    for key, value in {**TORCHRUN, "RANK": "3"}.items():
        monkeypatch.setenv(key, value)
    assert not D.is_main_process()


def test_what_runs_before_the_arguments_are_checked_imports_no_torch():
    code = ("import sys\n"
            "import dino_pipe.distributed, dino_pipe.device, dino_pipe.data.inputs, dino_pipe.train.inputs\n"
            "dino_pipe.distributed.is_main_process()\n"
            "print(sorted(m for m in ('torch', 'nvidia.dali') if m in sys.modules))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr
