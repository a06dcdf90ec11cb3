"""P4Testgen's tests of both programs, replayed on the v1model program on
BMv2 and on the embedded target (docs/tofino.md, "Executed").

- tests/testgen/tna: generated from p4src/tna (P4Testgen's Tofino target, its
  own model of TNA). Replayed on the v1model program, every difference must be
  one of stf.INTENDED_TNA, and each of those must still occur: the list is
  pinned both ways.
- tests/testgen/v1model: generated from p4src/flowtable.p4 by P4Testgen's BMv2
  target: a third oracle for the embedded target, and for BMv2 itself. No
  difference is allowed.
- A TNA program with a deliberately broken action yields tests the v1model
  program fails: the replay can fail (where P4Testgen is installed).
"""

from __future__ import annotations

import asyncio
import collections
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from p4flowtable.packetio import punt_names
from stf import INTENDED_TNA, difference, intended, load_dir, mapped
from testgen_replay import Bmv2Replay, EmbeddedReplay, NotReplayable

ROOT = Path(__file__).resolve().parents[1]
TESTGEN = ROOT / "tests" / "testgen"
LINKS = [(i, f"p4fttg-s{i}", f"p4fttg-h{i}") for i in (1, 2, 3, 4)]
# statements P4Testgen reaches in no test, and why (docs/tofino.md): the punt
# meter's red branch (its model of a meter never colours a packet: no meter
# configuration in an STF test) and, on Tofino, the egress parser (ingress
# sets bypass_egress: no packet goes through egress)
NOT_COVERED = {
    "tna": {"punt_dropped.count(ig_intr_md.ingress_port)", "ig_dprsr_md.drop_ctl = 1",
            "pkt.extract<egress_intrinsic_metadata_t>(eg_intr_md)"},
    "v1model": {"punt_dropped.count((bit<32>)std_meta.ingress_port)", "mark_to_drop(std_meta)"},
}


def _switches():
    out = [pytest.param("soft", id="soft")]
    marks = []
    if os.geteuid() != 0:
        marks.append(pytest.mark.skip(reason="needs root (veth links, raw sockets)"))
    elif not shutil.which("simple_switch_grpc"):
        marks.append(pytest.mark.skip(reason="BMv2 (simple_switch_grpc) is not installed on this machine"))
    out.append(pytest.param("bmv2", id="bmv2", marks=marks))
    return out


@pytest.fixture(scope="module", params=_switches())
def replay(request):
    """(run, kind): run(tests, tna) -> {test name: difference or None}."""
    loop = asyncio.new_event_loop()
    if request.param == "soft":
        runner = EmbeddedReplay()
        loop.run_until_complete(runner.start())
        yield _runner(loop, runner), "soft"
        loop.run_until_complete(runner.close())
        loop.close()
        return
    from p4ft_topo import free_tcp_port, start_switch_process, veth_links
    with veth_links([(sw, host) for _, sw, host in LINKS]):
        for _, sw, host in LINKS:      # P4Testgen's frames go up to 9,000 bytes
            for dev in (sw, host):
                subprocess.run(["ip", "link", "set", "dev", dev, "mtu", "9500"], check=True)
        grpc = f"127.0.0.1:{free_tcp_port()}"
        proc = start_switch_process("bmv2", [(port, sw) for port, sw, _ in LINKS], grpc)
        try:
            runner = Bmv2Replay(grpc, {port: host for port, _, host in LINKS})
            loop.run_until_complete(runner.start())
            yield _runner(loop, runner), "bmv2"
            loop.run_until_complete(runner.close())
        finally:
            proc.terminate()
            proc.wait(10)
            loop.close()


def _runner(loop, runner):
    schema = runner.schema
    reasons = punt_names(schema)

    def run(tests, tna: bool) -> dict[str, str | None]:
        """Each test's difference (None: none); tests the switch cannot be
        given are left out and counted in run.skipped."""
        out = {}
        run.skipped = collections.Counter()
        for t in tests:
            m = mapped(t, tna=tna, schema=schema, front_ports=runner.front_ports)
            try:
                out[t.name] = difference(m, loop.run_until_complete(runner.run(m)), reasons)
            except NotReplayable as e:
                run.skipped[re.sub(r"\d+-byte", "short", str(e))] += 1
        return out
    return run


def _coverage() -> dict[str, tuple[int, int, int, set[str]]]:
    """tests/testgen/COVERAGE: per program, tests, statements covered and in all, not covered."""
    out, current = {}, None
    for line in (TESTGEN / "COVERAGE").read_text().splitlines():
        m = re.match(r"(\w+): (\d+) tests, statements covered: [\d.]+ \((\d+)/(\d+)\)", line)
        if m:
            current = m.group(1)
            out[current] = (int(m.group(2)), int(m.group(3)), int(m.group(4)), set())
        elif line.startswith("\t") and current:
            statement = line.strip().split(": ", 1)[1].rstrip(";")
            out[current][3].add(statement.split("/", 1)[-1] if "/" in statement.split("(")[0] else statement)
    return out


def test_the_generated_tests_are_there_and_fresh_for_the_sources():
    r = subprocess.run(["make", "-s", "check-testgen"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    cov = _coverage()
    for kind in ("tna", "v1model"):
        n, covered, total, missing = cov[kind]
        assert n == len(list((TESTGEN / kind).glob("*.stf"))) > 100
        assert total - covered == len(missing)
        assert missing == NOT_COVERED[kind], f"{kind}: statements not covered changed: {missing}"
        print(f"\n[p4ft] P4Testgen {kind}: {n} tests, {covered}/{total} statements")


def test_the_tna_programs_tests_pass_on_v1model_but_for_the_intended_differences(replay):
    run, switch = replay
    tests = load_dir(TESTGEN / "tna")
    diffs = run(tests, tna=True)
    by_name = {t.name: t for t in tests}
    seen, unexplained = collections.Counter(), []
    for name, d in diffs.items():
        if d is None:
            continue
        why = intended(by_name[name])
        if why is None:
            unexplained.append(f"{name}: {d}")
        else:
            seen[why.name] += 1
    print(f"\n[p4ft] {switch}: {len(tests)} TNA tests, {sum(seen.values())} intended differences {dict(seen)}"
          f"{', not replayable: ' + str(dict(run.skipped)) if run.skipped else ''}")
    assert not unexplained, f"{len(unexplained)} unexplained differences:\n" + "\n".join(unexplained[:20])
    assert set(seen) == {i.name for i in INTENDED_TNA}, "an intended difference no longer occurs: unlist it"
    assert sum(1 for d in diffs.values() if d is None) > len(tests) / 2
    assert sum(run.skipped.values()) < len(tests) / 20


def test_the_v1model_programs_own_tests_pass(replay):
    run, switch = replay
    tests = load_dir(TESTGEN / "v1model")
    diffs = {n: d for n, d in run(tests, tna=False).items() if d}
    print(f"\n[p4ft] {switch}: {len(tests)} v1model tests, {len(diffs)} differ"
          f"{', not replayable: ' + str(dict(run.skipped)) if run.skipped else ''}")
    assert sum(run.skipped.values()) < len(tests) / 20
    assert not diffs, "\n".join(f"{n}: {d}" for n, d in list(diffs.items())[:20])


BREAKS = {
    # the next-hop table's miss action forgets to drop
    "nexthop_miss does not drop": ("action nexthop_miss() {\n        ig_dprsr_md.drop_ctl = 1;",
                                   "action nexthop_miss() {\n        ig_dprsr_md.drop_ctl = 0;"),
    # the flow actions' hit ignores its next-hop parameter (always next hop
    # 0). Not caught: once the program ignores the parameter P4Testgen leaves
    # it free, and a free value is 0 (400 of the flow entries it writes name
    # next hop 0), so the broken tests agree with the v1model program.
    "flow action ignores its next hop": ("meta.nexthop_id = nexthop_id;", "meta.nexthop_id = 0;"),
    # the rewrite takes two off the TTL
    "TTL decrement": ("hdr.ipv4.ttl = hdr.ipv4.ttl - 1;", "hdr.ipv4.ttl = hdr.ipv4.ttl - 2;"),
    # the IPv4 checksum's residual without the TTL/protocol word. Not caught:
    # P4Testgen's Tofino model leaves the checksum of a rewritten packet open
    # ("*" in 26 of the 29 forwarded IPv4 packets it expects), so the TNA
    # program's checksum arithmetic is checked by no test here (docs/tofino.md).
    "checksum subtraction": ("ipv4_csum.subtract({hdr.ipv4.hdr_checksum, hdr.ipv4.ttl, hdr.ipv4.protocol,",
                             "ipv4_csum.subtract({hdr.ipv4.hdr_checksum,"),
}
NOT_CAUGHT = {"checksum subtraction": "P4Testgen leaves the TNA program's checksums open",
              "flow action ignores its next hop": "P4Testgen gives a parameter the program ignores the value 0"}


@pytest.mark.skipif(not shutil.which(os.environ.get("P4TESTGEN", "p4testgen")),
                    reason="P4Testgen (p4testgen) is not installed on this machine")
@pytest.mark.parametrize("what", [pytest.param(w, marks=[pytest.mark.xfail(strict=True, reason=NOT_CAUGHT[w])]
                                               if w in NOT_CAUGHT else []) for w in BREAKS])
def test_a_broken_tna_program_fails_the_replay(tmp_path, what):
    """The replay is not vacuous: tests generated from a TNA program with one
    action broken fail on the v1model program, beyond the intended list."""
    src = tmp_path / "p4src"
    shutil.copytree(ROOT / "p4src", src, ignore=shutil.ignore_patterns("build"))
    old, new = BREAKS[what]
    for f in (src / "tna").glob("*.p4"):
        text = f.read_text()
        if old in text:
            f.write_text(text.replace(old, new, 1))
            break
    else:
        pytest.fail(f"{what}: the text to break is no longer in p4src/tna")
    args = subprocess.run(["make", "-s", "--no-print-directory", "-f", str(ROOT / "Makefile"), "print-testgen-args"],
                          cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    out = tmp_path / "tna"
    subprocess.run([os.environ.get("P4TESTGEN", "p4testgen"), *args, "--out-dir", str(out),
                    str(src / "tna" / "flowtable.p4")], check=True, capture_output=True, timeout=900)
    tests = load_dir(out)
    runner = EmbeddedReplay()
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(runner.start())
        diffs = _runner(loop, runner)(tests, tna=True)
        loop.run_until_complete(runner.close())
    finally:
        loop.close()
    by_name = {t.name: t for t in tests}
    unexplained = [n for n, d in diffs.items() if d and intended(by_name[n]) is None]
    print(f"\n[p4ft] broken TNA program ({what}): {len(unexplained)} of {len(tests)} tests fail on v1model")
    assert unexplained
