"""TLS benchmark: what DICOM TLS costs our SCP, beside what it costs dcmtk's storescp (issue 16).

Run: .venv/bin/python bench/tls_bench.py [--runs 3] [--quick]

dcmtk's storescu sends the same data set over one association, plain and with `+tls` (a client certificate
from the run's own CA, dcmtk's default profile: BCP 195 non-downgrading), to:
- router: one `manage.py runscp` process (the Procfile's scp command) listening on a plain port and a TLS
  port at once, on a fresh copy of a migrated PostgreSQL database; it fsyncs each file and commits its row
  before answering success. No worker: only receipt is measured.
- storescp: dcmtk's `storescp +xa -od DIR`, plain, and `+tls` with the same kind of certificate (no fsync).

The figure is each receiver's TLS throughput over its plain throughput (1.0: TLS costs nothing), medians of
`--runs` runs, and ours beside storescp's. Both use OpenSSL; ours goes through Python's ssl module, one
read call per chunk the PDU guard asks for. Goal: our ratio at least 0.8 x storescp's ratio (TLS costs us
no more than a fifth more of our throughput than it costs dcmtk of its own).
Results go to bench/results/tls.json (tls-quick.json with --quick).
"""

import argparse
import os
import re
import subprocess
import time
from pathlib import Path

from common import (
    CALLING_AE,
    NODELAY,
    RESULTS,
    DataSet,
    Process,
    RouterDatabase,
    Series,
    StoreSCP,
    code_version,
    common_arguments,
    dcmtk,
    free_port,
    machine_info,
    make_datasets,
    procfile,
    router_env,
    run_main,
    scratch,
    settle,
    wait_for_count,
    wipe,
    workspace,
    write_results,
)

from tests.support.certs import Authority

GOAL = 0.8  # our TLS/plain ratio over storescp's


def storescu(port: int, data: DataSet, *, called: str, tls: tuple | None) -> float:
    """Send the data set over one association; storescu's wall time. `tls`: (client Pem, CA file) or None."""
    args = [dcmtk("storescu"), "-R", "-aet", CALLING_AE, "-aec", called]
    if tls:
        client, ca = tls
        args += ["+tls", str(client.key), str(client.cert), "+cf", ca]
    args += ["127.0.0.1", str(port), *map(str, data.paths)]
    started = time.perf_counter()
    result = subprocess.run(args, capture_output=True, text=True, timeout=900, env={**os.environ, **NODELAY})
    elapsed = time.perf_counter() - started
    if result.returncode != 0 or re.search(r"(?m)^E: ", result.stderr + result.stdout):
        raise RuntimeError(f"storescu to {called} failed ({result.returncode}):\n{result.stderr[-2000:]}")
    return elapsed


class RouterTls:
    """runscp with both listeners, on a fresh database."""

    name = "router"
    ae_title = "ROUTER"

    def __init__(self, env: dict, log_dir: Path, *, db: RouterDatabase) -> None:
        self.db = db
        self.port, self.tls_port = free_port(), free_port()
        ports = ["--port", str(self.port), "--tls-port", str(self.tls_port)]
        self.scp = Process("scp", procfile.command("scp", "--host", "127.0.0.1", *ports), env=env, log_dir=log_dir)
        self.scp.wait_for_port(self.port)
        self.scp.wait_for_port(self.tls_port)

    def count(self) -> int:
        return self.db.count("SELECT count(*) FROM studies_receivedinstance")

    def stop(self) -> None:
        self.scp.stop()


def one_run(receiver: str, secure: bool, data: DataSet, work: Path, pki: dict, *, db, broker: str) -> float:
    folder = work / f"run-{receiver}"
    wipe(folder)
    folder.mkdir(parents=True)
    logs = work / "logs"
    client = (pki["client"], pki["ca"].ca_file) if secure else None
    if receiver == "router":
        env = router_env(database_url_=db.fresh(), broker_url=broker, folder=folder)
        env |= {"SCP_TLS_CERT": str(pki["server"].cert), "SCP_TLS_KEY": str(pki["server"].key)}
        env["SCP_TLS_CA"] = pki["ca"].ca_file
        target = RouterTls(env, logs, db=db)
        port = target.tls_port if secure else target.port
    else:
        options = ("+tls", str(pki["server"].key), str(pki["server"].cert), "+cf", pki["ca"].ca_file) if secure else ()
        target = StoreSCP(folder / "out", logs, options=options, name="storescp-tls" if secure else None)
        port = target.port
    try:
        settle()
        elapsed = storescu(port, data, called=target.ae_title, tls=client)
        wait_for_count(target, data.count, timeout=60)
        return elapsed
    finally:
        target.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_arguments(parser)
    args = parser.parse_args()
    runs = args.runs or (1 if args.quick else 3)
    output = args.output or RESULTS / ("tls-quick.json" if args.quick else "tls.json")
    work = scratch("tls-bench-")
    (work / "logs").mkdir()
    db = RouterDatabase(args.postgres, work / "logs", name=args.database)
    ca = Authority(work / "pki", "Bench CA")
    pki = {"ca": ca, "server": ca.issue("receiver", server=True), "client": ca.issue("modality")}
    datasets = make_datasets(work / "data", quick=args.quick)
    receivers = ("router", "storescp")
    seconds = {(d.name, r, s): Series() for d in datasets for r in receivers for s in (False, True)}
    result: dict = {
        "benchmark": "tls",
        "machine": machine_info(args.postgres),
        "code": code_version(),
        "parameters": {"runs": runs, "quick": args.quick, "sender": "storescu -R, one association; +tls: BCP 195-nd"},
        "datasets": {d.name: {**d.describe(), "unit": d.unit} for d in datasets},
    }
    with workspace(work, db, args, logs=f"{work / 'logs'}*"):
        db.create_template(router_env(database_url_=db.template_url, broker_url=args.broker, folder=work / "tmpl"))
        for data in datasets:
            for run in range(runs):
                for receiver in receivers:
                    for secure in (run % 2 == 1, run % 2 == 0):  # alternate which goes first
                        elapsed = one_run(receiver, secure, data, work, pki, db=db, broker=args.broker)
                        seconds[data.name, receiver, secure].values.append(elapsed)
                        kind = "TLS  " if secure else "plain"
                        print(
                            f"{data.name:6} run {run + 1}/{runs} {receiver:9} {kind} {elapsed:7.2f} s "
                            f"{data.throughput(elapsed):8.1f} {data.unit}",
                            flush=True,
                        )
    figures, met = {}, True
    print(f"\n{'data':8}{'receiver':10}{'plain':>12}{'TLS':>12}{'TLS/plain':>11}")
    for data in datasets:
        ratios = {}
        for receiver in receivers:
            plain = data.throughput(seconds[data.name, receiver, False].median)
            secure = data.throughput(seconds[data.name, receiver, True].median)
            ratios[receiver] = secure / plain
            figures.setdefault(data.name, {})[receiver] = {
                "plain": round(plain, 2),
                "tls": round(secure, 2),
                "unit": data.unit,
                "tls_over_plain": round(ratios[receiver], 3),
                "seconds_plain": [round(s, 3) for s in seconds[data.name, receiver, False].values],
                "seconds_tls": [round(s, 3) for s in seconds[data.name, receiver, True].values],
            }
            print(f"{data.name:8}{receiver:10}{plain:12.1f}{secure:12.1f}{ratios[receiver]:11.2f}")
        relative = ratios["router"] / ratios["storescp"]
        figures[data.name]["ours_over_storescp_ratio"] = round(relative, 3)
        met = met and relative >= GOAL
        print(f"{data.name:8}our TLS/plain is {relative:.2f} x storescp's (goal >= {GOAL})")
    result["figures"] = figures
    result["goal_met"] = met
    write_results(output, result)
    return 0 if met else 1


if __name__ == "__main__":
    run_main(main)
