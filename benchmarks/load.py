"""How the code location scales with the number of specs: load time and one tick of every sensor.

For 1, 10, 50 and 200 specs across 10 teams (a spec root of team folders, ``<root>/team_NN/<model>.yaml``), each
spec a renamed copy of one of the bundled examples (round robin: two stage through dbt, two do not) with its own
data file (a hard link of the bundled file, so no spec reads a file another spec already read), measures in a
fresh process each (what a code-server reload costs):

  load:    interpreter start to the Definitions built and resolved (``import mlplatform.definitions``: imports,
           every spec's checks against its data file, estimator and dbt model, every model's assets, jobs, schedule,
           sensors; then the repository resolved as a code server does before it answers);
  sensors: one evaluation of every sensor of every model against a real Dagster instance (SQLite in a temp dir),
           as the daemon ticks them, all in sequence.

One untimed process first prepares the dbt manifest, so no timed run pays ``dbt parse``. Printed as a table with
each row's difference and ratio to the 1-spec baseline. Targets (issue 25, on 2 cores): 50 specs add <= 3 s over one,
all 50 models' sensor ticks together <= 1 s.

    python3 dev.py install && .venv/bin/python benchmarks/load.py [--counts 1 10 50 200] [--teams 10]
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()  # before any import of ours: the load is measured from the interpreter's start

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "mlplatform" / "examples"


def generate(root: Path, count: int, teams: int, flat: bool = False) -> None:
    """``count`` specs in ``min(teams, count)`` team folders, each with its own data file (``flat``: all in ``root``,
    each naming its team, to compare with a version of the platform before team folders)."""
    bases = sorted(EXAMPLES.glob("*.yaml"))
    for i in range(count):
        base = bases[i % len(bases)]
        text = base.read_text()
        model = re.search(r"^name: (\w+)", text, re.M).group(1) + f"_{i:03d}"
        team = f"team_{i % teams:02d}"
        folder = root if flat else root / team
        folder.mkdir(parents=True, exist_ok=True)
        source = re.search(r"path: data/(\S+)", text).group(1)
        data = folder / f"{model}.{source.split('.', 1)[1]}"
        try:
            os.link(EXAMPLES / "data" / source, data)
        except OSError:
            shutil.copyfile(EXAMPLES / "data" / source, data)
        text = re.sub(r"^name: \w+", f"name: {model}", text, flags=re.M)
        text = re.sub(r"^owner: .*$", f"owner: team:{team}" if flat else "", text, flags=re.M)  # else the folder's
        text = text.replace(f"path: data/{source}", f"path: {data.name}")
        (folder / f"{model}.yaml").write_text(text)


def worker() -> None:
    """In a fresh process: build the code location, then tick every sensor once; print the timings as JSON."""
    import mlplatform.definitions as location

    location.defs.get_repository_def()  # what a code server does before it answers: resolve jobs, asset graph
    loaded = time.perf_counter() - STARTED
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime
    from dagster import build_sensor_context, instance_for_test

    defs = location.defs
    sensors = list(defs.sensors or [])
    with instance_for_test() as instance:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu_before = usage.ru_utime + usage.ru_stime
        started = time.perf_counter()
        for sensor in sensors:
            sensor.evaluate_tick(build_sensor_context(instance=instance, definitions=defs))
        ticks = time.perf_counter() - started
        usage = resource.getrusage(resource.RUSAGE_SELF)
        tick_cpu = usage.ru_utime + usage.ru_stime - cpu_before
    models = len([job for job in defs.jobs or [] if getattr(job, "name", "").endswith("_pipeline")])
    print(json.dumps({"load": loaded, "cpu": cpu, "ticks": ticks, "tick_cpu": tick_cpu, "sensors": len(sensors),
                      "models": models}))


def run(root: Path, home: Path) -> dict:
    env = {**os.environ, "MLPLATFORM_SPECS": str(root), "MLPLATFORM_HOME": str(home)}
    env.pop("MLPLATFORM_STRICT_SPECS", None)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--worker"], env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"the code location did not load from {root}:\n{done.stderr[-3000:]}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "wall": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 10, 50, 200])
    parser.add_argument("--teams", type=int, default=10)
    parser.add_argument("--flat", action="store_true", help="all specs in one folder, each with owner: team:<team> "
                        "(what a version without team folders reads)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker()
        return
    work = Path(tempfile.mkdtemp(prefix="load_bench_"))
    home = work / "home"
    try:
        rows = []
        for count in args.counts:
            root = work / f"specs_{count}"
            generate(root, count, args.teams, args.flat)
            if not rows:
                run(root, home)  # untimed: dbt parse once, warm file caches
            rows.append((count, run(root, home)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = rows[0][1]
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; fresh process per row")
    print(f"{'specs':>5} {'teams':>5} {'models':>6} {'load s':>7} {'+s vs 1':>8} {'x 1':>5} {'cpu s':>6} "
          f"{'+cpu s':>7} {'sensors':>7} {'ticks s':>8} {'cpu s':>6} {'ms/sensor':>9}")
    for count, row in rows:
        print(f"{count:>5} {min(count, args.teams):>5} {row['models']:>6} {row['load']:>7.2f} "
              f"{row['load'] - base['load']:>+8.2f} {row['load'] / base['load']:>5.2f} {row['cpu']:>6.2f} "
              f"{row['cpu'] - base['cpu']:>+7.2f} {row['sensors']:>7} {row['ticks']:>8.3f} {row['tick_cpu']:>6.3f} "
              f"{1000 * row['ticks'] / max(row['sensors'], 1):>9.1f}")
    print("load: interpreter start to the Definitions resolved; cpu: the process's user+system CPU seconds (on a "
          "busy machine the honest measure of the work); ticks: every sensor evaluated once, in sequence")


if __name__ == "__main__":
    main()
