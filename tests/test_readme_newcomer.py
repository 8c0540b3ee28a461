"""What a newcomer reads in the README holds: the CPU-only install, timm's task import, em_apl's warm-up."""
import inspect
import os
import re
import textwrap

import pytest

README = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")


@pytest.fixture(scope="module")
def readme():
    with open(README, encoding="utf-8") as f:
        return f.read()


def test_the_cpu_only_install_is_given_beside_the_default(readme):
    assert "pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu && pip install -e ." \
        in readme
    assert "CUDA build" in readme


def test_timm_task_is_imported_before_it_is_used(readme):
    usage = readme.index("timm.task.MultiLabelClassificationTask")
    assert "import timm.task" in readme[:usage]
    block = textwrap.dedent(re.search(r"```python\n( *import timm\.task\n.*?) *```", readme, re.S).group(1))
    import torch

    import spl_losses

    model = torch.nn.Linear(4, 3)
    namespace = {"model": model, "spl_losses": spl_losses}
    exec(block, namespace)  # the README's snippet, as written
    assert namespace["task"].criterion.__class__.__name__


def test_em_apl_default_warm_up_is_stated(readme):
    from spl_losses.losses import EntropyMaximizationAPLLoss

    default = inspect.signature(EntropyMaximizationAPLLoss.__init__).parameters["warmup_epochs"].default
    assert f"`warmup_epochs=%d`" % default in readme
    assert f"{default} by default" in readme


def test_accelerate_launch_warning_without_a_config_is_explained(readme, tmp_path):
    """The README quotes accelerate's warning as accelerate prints it, and its way out (``accelerate config
    default``) writes a config that silences it."""
    import subprocess
    import sys

    import accelerate.commands.launch as launch

    quoted = "The following values were not passed to `accelerate launch` and had defaults used instead:"
    flat = " ".join(readme.split())
    assert quoted in flat and quoted in inspect.getsource(launch)
    assert "accelerate config default" in readme
    config = tmp_path / "default_config.yaml"
    done = subprocess.run([sys.executable, "-m", "accelerate.commands.accelerate_cli", "config", "default",
                           "--config_file", str(config)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and config.exists(), done.stderr
    script = tmp_path / "noop.py"
    script.write_text("print('ran')\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launched = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
                               str(script)], capture_output=True, text=True, timeout=120, env=env)
    assert launched.returncode == 0 and "ran" in launched.stdout, launched.stderr
    assert "were not passed" not in launched.stderr
