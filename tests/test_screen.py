"""The server screens training replies before aggregation: every kind of hostile or broken
update is rejected with a reason naming it, honest replies go to Flower's strategy in the
order they came, and rejecting a reply aggregates exactly as if it had never arrived."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("flwr")

from flwr.app import (  # noqa: E402
    Array,
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import strategy as S  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

from device_runtime.errors import ConfigError  # noqa: E402
from server.screen import ScreenRules, screen_replies  # noqa: E402

GLOBAL = {"fc1:weight": np.full((4, 3), 1.0, np.float32), "fc1:bias": np.zeros(3, np.float32)}
W_NORM = float(np.sqrt(12.0))  # ||w|| of GLOBAL


@pytest.fixture(autouse=True)
def _task_identity():
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0


def _record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})


def _reply(node: int, arrays: dict | None = None, metrics: dict | None = None,
           content: RecordDict | None = None) -> Message:
    """A training reply of ``node``, as a real Flower Message answering a real instruction."""
    ins = Message(RecordDict({"config": ConfigRecord({"server-round": 1})}), dst_node_id=node,
                  message_type="train")
    ins.metadata.__dict__["_message_id"] = f"ins-{node}"
    if content is None:
        content = RecordDict({"arrays": _record(GLOBAL if arrays is None else arrays),
                              "metrics": MetricRecord(metrics or {"num-examples": 10,
                                                                  "train-loss": 0.5})})
    return Message(content, reply_to=ins)


def _moved(delta: float) -> dict[str, np.ndarray]:
    """GLOBAL with every element moved by ``delta``: update norm = |delta| * sqrt(15)."""
    return {k: (v + np.float32(delta)).astype(np.float32) for k, v in GLOBAL.items()}


def test_each_kind_of_broken_update_is_rejected_with_its_reason():
    # Prepare: two honest replies and one of each broken kind
    nan = _moved(0.1)
    nan["fc1:bias"][1] = np.nan
    inf = _moved(0.1)
    inf["fc1:weight"][0, 0] = -np.inf
    shape = {**_moved(0.1), "fc1:bias": np.zeros(4, np.float32)}
    dtype = {**_moved(0.1), "fc1:weight": GLOBAL["fc1:weight"].astype(np.float64)}
    missing = {"fc1:weight": GLOBAL["fc1:weight"]}
    extra = {**_moved(0.1), "injected:extra": np.zeros(1, np.float32)}
    two = RecordDict({"a": _record(GLOBAL), "b": _record(GLOBAL),
                      "metrics": MetricRecord({"num-examples": 1})})
    replies = [_reply(1, _moved(0.1)), _reply(2, nan), _reply(3, inf), _reply(4, shape),
               _reply(5, dtype), _reply(6, missing), _reply(7, extra), _reply(8, content=two),
               _reply(9, _moved(0.1), {"num-examples": 0, "train-loss": 0.5}),
               _reply(10, _moved(0.1), {"num-examples": float("nan"), "train-loss": 0.5}),
               _reply(11, _moved(0.1), {"num-examples": 10, "train-loss": 0.5, "odd": 1.0}),
               _reply(12, _moved(-0.1))]

    # Execute
    kept, rejected = screen_replies(replies, _record(GLOBAL))

    # Assert: only the honest ones are kept, in order; each other one has its kind
    assert [m.metadata.src_node_id for m in kept] == [1, 12]
    kinds = {r.node: r.kind for r in rejected}
    assert kinds == {2: "non-finite", 3: "non-finite", 4: "shape", 5: "dtype", 6: "keys",
                     7: "keys", 8: "malformed", 9: "num-examples", 10: "num-examples",
                     11: "metrics"}
    why = {r.node: r.reason for r in rejected}
    assert "fc1:bias has 1 NaN or infinite values of 3" in why[2]
    assert "shape (4,), expected (3,)" in why[4] and "float64, expected float32" in why[5]
    assert "missing ['fc1:bias']" in why[6] and "unknown ['injected:extra']" in why[7]
    assert "unknown ['odd']" in why[11]


def test_replies_are_held_to_the_models_layout_not_the_aggregates_dtype():
    # FedAdam's aggregate is float64; devices keep replying in the model's float32
    wide = _record({k: v.astype(np.float64) for k, v in GLOBAL.items()})
    replies = [_reply(1, _moved(0.1)), _reply(2, {k: v.astype(np.float64)
                                                  for k, v in _moved(0.1).items()})]
    kept, rejected = screen_replies(replies, wide, layout=_record(GLOBAL))
    assert [m.metadata.src_node_id for m in kept] == [1]
    assert [(r.node, r.kind) for r in rejected] == [(2, "dtype")]


def test_undecodable_arrays_are_rejected_not_raised():
    bad = ArrayRecord({"fc1:weight": Array(dtype="float32", shape=(4, 3), stype="numpy.ndarray",
                                           data=b"not an npy file"),
                       "fc1:bias": Array(GLOBAL["fc1:bias"])})
    content = RecordDict({"arrays": bad, "metrics": MetricRecord({"num-examples": 3})})
    kept, rejected = screen_replies([_reply(1, content=content)], _record(GLOBAL))
    assert kept == [] and rejected[0].kind == "malformed"
    assert "fc1:weight does not decode" in rejected[0].reason


def test_norm_rules_relative_to_the_model_and_to_the_rounds_median():
    # Prepare: honest updates of norm 0.1*sqrt(15) and 0.2*sqrt(15); ||w|| = sqrt(12)
    honest = [_reply(n, _moved(d)) for n, d in ((1, 0.1), (2, -0.1), (3, 0.2), (4, 0.1))]
    scaled = _reply(5, _moved(1.5))  # 15 x the honest median update
    absurd = _reply(6, _moved(40.0))  # ||d|| = 40 sqrt(15) = 44.7 x ||w||

    # Execute: 10 x ||w|| (the default), 10 x the median
    rules = ScreenRules(max_norm_over_median=10.0)
    kept, rejected = screen_replies([*honest, scaled, absurd], _record(GLOBAL), rules)

    # Assert: the absurd one by the first rule; the median is 0.1*sqrt(15) (of 1,2,4,5 and 3
    # -> sorted 0.1,0.1,0.1,0.2,1.5), so the scaled one is 15 x the median: rejected
    assert {r.node: r.kind for r in rejected} == {6: "norm", 5: "norm-median"}
    assert [m.metadata.src_node_id for m in kept] == [1, 2, 3, 4]
    r = {x.node: x.reason for x in rejected}
    assert f"{40 * np.sqrt(15) / W_NORM:.3g} x the global weights' norm" in r[6]
    assert "15 x the round's median" in r[5]
    # a looser median bound keeps it; both rules off keep everything; screening off too
    loose = ScreenRules(max_norm_over_median=20.0)
    assert [x.node for x in screen_replies([*honest, scaled], _record(GLOBAL), loose)[1]] == []
    off = ScreenRules(max_update_norm=0, max_norm_over_median=0)
    assert screen_replies([*honest, scaled, absurd], _record(GLOBAL), off)[1] == []
    kept, rejected = screen_replies([_reply(1, {"x": np.ones(1)})], _record(GLOBAL),
                                    ScreenRules(enabled=False))
    assert len(kept) == 1 and rejected == []
    # by default only the first rule applies; with two replies there is no median either
    assert screen_replies([*honest, scaled], _record(GLOBAL))[1] == []
    assert screen_replies([honest[0], scaled], _record(GLOBAL), rules)[1] == []


def test_error_replies_pass_through_to_the_strategy():
    ins = Message(RecordDict(), dst_node_id=3, message_type="train")
    ins.metadata.__dict__["_message_id"] = "x"
    err = Message(Error(0, "device failed"), reply_to=ins)
    kept, rejected = screen_replies([err, _reply(1, _moved(0.1))], _record(GLOBAL))
    assert kept[0] is err and len(kept) == 2 and rejected == []


def test_rejected_replies_aggregate_as_if_they_never_came():
    # Prepare: FedAvg over two honest replies, with and without three hostile ones
    a, b = _moved(0.1), _moved(0.4)
    honest = [_reply(1, a, {"num-examples": 1}), _reply(2, b, {"num-examples": 2})]
    nan = _moved(0.1)
    nan["fc1:weight"][:] = np.nan
    hostile = [_reply(3, nan, {"num-examples": 100}), _reply(4, _moved(1e6),
                                                             {"num-examples": 100})]

    # Execute
    kept, _ = screen_replies([honest[0], *hostile, honest[1]], _record(GLOBAL))
    got, _ = S.FedAvg().aggregate_train(1, kept)

    # Assert: (w_a*1 + w_b*2)/3, worked out by hand: every element moved by 0.3
    for k, v in GLOBAL.items():
        np.testing.assert_allclose(got[k].numpy(), v + 0.3, rtol=1e-6)


def test_bad_rule_values_are_config_errors():
    with pytest.raises(ConfigError, match="max-update-norm must be a finite number >= 0"):
        ScreenRules.from_run_config({"max-update-norm": -1})
    with pytest.raises(ConfigError, match="max-norm-over-median"):
        ScreenRules.from_run_config({"max-norm-over-median": float("nan")})
    r = ScreenRules.from_run_config({"screen-updates": "false", "max-update-norm": 3})
    assert r == ScreenRules(3.0, 0.0, False)


def _fedavg(replies: list) -> dict[str, np.ndarray]:
    arrays, _ = S.FedAvg().aggregate_train(1, replies)
    assert arrays is not None
    return {k: a.numpy() for k, a in arrays.items()}


def _gap(a: dict, b: dict) -> float:
    return float(np.sqrt(sum(np.sum((a[k] - b[k]) ** 2) for k in a)))


def test_an_inflated_num_examples_claim_cannot_steer_fedavg():
    # Prepare: ten honest devices with 20..110 examples, each moving the weights a little;
    # one attacker sends -w and claims 1e9 examples (it took FedAvg from 69.8% to 6.7%)
    rng = np.random.default_rng(0)
    honest = [_reply(n, {k: (v + rng.normal(0, 0.01, v.shape)).astype(np.float32)
                         for k, v in GLOBAL.items()},
                     {"num-examples": 20.0 + 10 * n, "train-loss": 0.5}) for n in range(10)]
    flipped = {k: -v for k, v in GLOBAL.items()}
    liar = _reply(99, flipped, {"num-examples": 1e9, "train-loss": 0.5})
    most = max(20.0 + 10 * n for n in range(10))
    # Execute
    unscreened = _fedavg(honest + [liar])
    kept, rejected = screen_replies(honest + [liar], _record(GLOBAL),
                                    ScreenRules(max_num_examples=most))
    # Assert: the claim is refused with its reason, and what is aggregated is the honest
    # replies alone; without the bound the liar owns the aggregate
    assert [(r.node, r.kind) for r in rejected] == [(99, "num-examples")]
    assert "1e+09" in rejected[0].reason and "max-num-examples" in rejected[0].reason
    clean = _fedavg(honest)
    assert _gap(_fedavg(kept), clean) == 0.0
    assert _gap(unscreened, flipped) < 1e-3  # the liar's weights, nearly exactly
    # the most a device can move it is what the largest honest device sending -w does
    at_bound = _fedavg(honest + [_reply(98, flipped, {"num-examples": most,
                                                      "train-loss": 0.5})])
    assert _gap(at_bound, clean) < 0.2 * _gap(unscreened, clean)


def test_a_nodes_claim_may_not_grow_after_its_first_accepted_round():
    claims: dict[str, float] = {}
    first = [_reply(n, _moved(0.01), {"num-examples": 40.0, "train-loss": 0.5})
             for n in (1, 2, 3)]
    kept, rejected = screen_replies(first, _record(GLOBAL), ScreenRules(), claims=claims)
    assert len(kept) == 3 and not rejected and claims == {"1": 40.0, "2": 40.0, "3": 40.0}
    later = [_reply(1, _moved(0.01), {"num-examples": 40.0, "train-loss": 0.5}),
             _reply(2, _moved(0.01), {"num-examples": 1e9, "train-loss": 0.5}),
             _reply(3, _moved(0.01), {"num-examples": 35.0, "train-loss": 0.5})]
    kept, rejected = screen_replies(later, _record(GLOBAL), ScreenRules(), claims=claims)
    assert [(r.node, r.kind) for r in rejected] == [(2, "num-examples-grew")]
    assert "40 in its first accepted round" in rejected[0].reason
    assert claims["3"] == 40.0  # the first accepted claim stays the bound
    with pytest.raises(ConfigError, match="max-num-examples"):
        ScreenRules.from_run_config({"max-num-examples": -1})
