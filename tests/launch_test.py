"""The launchers' exact commands (--dry_run), and local.sh's handling of its processes."""
import os
import shlex
import shutil
import subprocess
import tempfile
import time

from absl.testing import absltest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _launch(script, *args, env=None, check=True):
  full_env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
  full_env.update(env or {})
  out = subprocess.run(["bash", os.path.join(ROOT, "launch", script), *args],
                       capture_output=True, text=True, env=full_env, cwd=ROOT, timeout=120)
  if check:
    assert out.returncode == 0, out.stderr
  return out


class LaunchTest(absltest.TestCase):

  def test_local_dry_run_gives_each_process_its_index(self):
    out = _launch("local.sh", "--dry_run", "--processes", "2", "--cpu_devices", "4",
                  "--port", "4321", "configs/eve.py:tiny", "/tmp/w", "--config.eve.iterations=1",
                  env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8 --xla_dump_to=/d"})
    lines = out.stdout.strip().splitlines()
    self.assertLen(lines, 2)
    cores = sorted(os.sched_getaffinity(0))   # each process pinned to one of them in turn
    for i, line in enumerate(lines):
      label, command = line.split(": ", 1)
      self.assertEqual(label, f"process {i}")
      self.assertEqual(shlex.split(command), [
          "env", "JAX_PLATFORMS=cpu",
          "XLA_FLAGS=--xla_dump_to=/d --xla_force_host_platform_device_count=4",
          *(["taskset", "-c", str(cores[i % len(cores)])] if shutil.which("taskset") else []),
          "python", "-m", "evejax.main", "--distributed",
          "--coordinator_address=127.0.0.1:4321", "--num_processes=2", f"--process_id={i}",
          "--config", "configs/eve.py:tiny", "--workdir", "/tmp/w",
          "--config.eve.iterations=1"])

  def test_local_single_process_runs_main_plainly(self):
    out = _launch("local.sh", "--dry_run", "configs/mmzero.py:tiny")
    self.assertEqual(shlex.split(out.stdout.split(": ", 1)[1]), [
        "env", "python", "-m", "evejax.main", "--config", "configs/mmzero.py:tiny",
        "--workdir", "workdirs/mmzero_tiny"])

  def test_local_stops_with_the_status_of_a_failed_process(self):
    # A stand-in interpreter (the launcher's $PYTHON): process 1 fails at once,
    # process 0 would run for a minute unless the launcher stops it.
    scratch = tempfile.mkdtemp()
    fake = os.path.join(scratch, "python")
    with open(fake, "w") as f:
      f.write("#!/usr/bin/env bash\n"
              "if [[ $1 == -c ]]; then exec python3 \"$@\"; fi\n"
              "for a; do [[ $a == --process_id=* ]] && id=${a#*=}; done\n"
              "if [[ $id == 1 ]]; then echo \"process 1: no_such_recipe\" >&2; exit 3; fi\n"
              "exec sleep 60\n")
    os.chmod(fake, 0o755)
    workdir = os.path.join(scratch, "work")
    start = time.monotonic()
    out = _launch("local.sh", "--processes", "2", "--cpu_devices", "1",
                  "configs/eve.py:tiny", workdir, env={"PYTHON": fake}, check=False)
    self.assertEqual(out.returncode, 3, out.stderr)
    self.assertLess(time.monotonic() - start, 30)  # process 0 was stopped
    with open(os.path.join(workdir, "launch.p1.log")) as f:
      self.assertEqual(f.read(), "process 1: no_such_recipe\n")

  def test_local_single_process_fails_as_main_does(self):
    out = _launch("local.sh", "--cpu_devices", "2", "configs/no_such_recipe.py:tiny",
                  tempfile.mkdtemp(), check=False)
    self.assertNotEqual(out.returncode, 0)
    self.assertIn("no_such_recipe.py' does not exist", out.stderr + out.stdout)

  def test_local_refuses_unknown_options(self):
    out = _launch("local.sh", "--nodes", "2", check=False)
    self.assertEqual(out.returncode, 2)
    self.assertIn("unknown option --nodes", out.stderr)

  def test_slurm_one_node_and_several(self):
    one = _launch("gpu_slurm.sh", "--dry_run", "configs/eve.py:tiny", "/w")
    self.assertEqual(shlex.split(one.stdout), [
        "srun", "--nodes=1", "--ntasks-per-node=1", "python", "-m", "evejax.main",
        "--config", "configs/eve.py:tiny", "--workdir", "/w"])
    four = _launch("gpu_slurm.sh", "--dry_run", "configs/eve.py:qwen2_5_vl_7b", "/shared/w",
                   "--config.init.hf_dir=/shared/my model",
                   env={"SLURM_JOB_NUM_NODES": "4", "SLURM_JOB_ID": "77"})
    self.assertEqual(shlex.split(four.stdout), [
        "srun", "--nodes=4", "--ntasks-per-node=1", "python", "-m", "evejax.main",
        "--distributed", "--config", "configs/eve.py:qwen2_5_vl_7b", "--workdir", "/shared/w",
        "--config.init.hf_dir=/shared/my model"])

  def test_tpu_pod_ships_the_checkout_and_runs_one_program_on_every_worker(self):
    out = _launch("tpu_pod.sh", "--dry_run", "my-tpu", "us-central2-b", "configs/eve.py:tiny",
                  "/mnt/shared/w", "--config.eve.iterations=2", env={"TPU_PROJECT": "proj"})
    archive, scp, ssh = [shlex.split(line) for line in out.stdout.splitlines() if line]
    self.assertEqual(archive, ["git", "archive", "--format=tar.gz", "-o", "/tmp/evejax.tar.gz",
                               "HEAD"])
    self.assertEqual(scp, ["gcloud", "compute", "tpus", "tpu-vm", "scp", "/tmp/evejax.tar.gz",
                           "my-tpu:~/evejax.tar.gz", "--zone", "us-central2-b",
                           "--project", "proj", "--worker=all"])
    self.assertEqual(ssh[:11], ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-tpu",
                                "--zone", "us-central2-b", "--project", "proj", "--worker=all"])
    self.assertEqual(ssh[11], "--command")
    remote = ssh[12]
    self.assertIn("pip install -q -e . 'jax[tpu]'", remote)
    train = shlex.split(remote.split("&& ")[-1])
    self.assertEqual(train, ["python", "-m", "evejax.main", "--distributed", "--config",
                             "configs/eve.py:tiny", "--workdir", "/mnt/shared/w",
                             "--config.eve.iterations=2"])

  def test_launchers_print_usage_without_arguments(self):
    for script in ("gpu_slurm.sh", "tpu_pod.sh"):
      out = _launch(script, check=False)
      self.assertEqual(out.returncode, 2, script)
      self.assertIn("usage:", out.stderr)


class MainFlagsTest(absltest.TestCase):

  def test_process_flags_need_distributed(self):
    out = subprocess.run(
        ["python", "-m", "evejax.main", "--config", "configs/eve.py:tiny", "--num_processes=2",
         "--local_device_ids=0,1"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu"})
    self.assertNotEqual(out.returncode, 0)
    self.assertIn("--num_processes, --local_device_ids need --distributed",
                  out.stderr + out.stdout)

  def test_partial_coordinates_name_what_is_missing(self):
    out = subprocess.run(
        ["python", "-m", "evejax.main", "--config", "configs/eve.py:tiny", "--distributed",
         "--coordinator_address=127.0.0.1:1", "--num_processes=2"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu"})
    self.assertNotEqual(out.returncode, 0)
    self.assertIn("needs --process_id too", out.stderr + out.stdout)


if __name__ == "__main__":
  absltest.main()
