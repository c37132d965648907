"""``nnfleet bench soak`` with the fault kinds of issue 14 (item 5), small: OS-level cap kills
(one native over-allocation past the cap, killed by the kernel where devices run in memory
cgroups) and inflated ``num-examples`` claims (1e9, rejected by the server), among the
others; every device-round accounted for, each injected fault with its expected outcome."""

from __future__ import annotations

import pytest

from experiments.fleet.cgroup import open_run


@pytest.mark.parametrize("isolation", ["fork", "worker"])
def test_small_soak_accounts_for_oom_kills_and_inflated_claims(isolation):
    pytest.importorskip("flwr")
    from experiments.bench.soak import report, soak

    cg, _ = open_run("auto")
    if cg is not None:
        cg.close()
    # a timeout no honest device meets on a loaded machine (hang is not among the kinds)
    r = soak(devices=12, rounds=2, rate=0.3, timeout=300.0, workers=2, warmup=0,
             isolation=isolation, kinds=["oom", "claim", "cap", "raise"])
    print("\n" + report(r))
    assert r["accounted"] == r["device_rounds"] == 24
    assert not r["mismatched"], r["mismatched"]
    oom = r["injected"].get("oom", 0)
    claims = r["injected"].get("claim", 0)
    assert oom and claims  # the draw (seed 0, 30%) has both
    assert r["injected_outcomes"]["oom->cap-exceeded"] == oom
    # every inflated claim reached the server and was rejected there
    assert r["hostile_at_server"] == {"claim->rejected": claims}
    if cg is not None:  # the kernel, not the runtime's guard, stopped every oom device
        assert r["cgroups"]["mode"] == "on" and r["os_kills"] == oom
    else:
        assert r["cgroups"]["mode"] == "off" and r["os_kills"] == 0
