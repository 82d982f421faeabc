"""int8 accuracy: the per-layer error (checked against onnxruntime run here on the same tensors), the layers
kept in float, the accuracy.max_drop search, the kept-float file, accuracy.calibration=auto, validate."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import built_folder, cli_in_process

from yolobuild.runtime.layer_error import EXACT_DB, LayerStats, cosine, own_sqnr_db, rank, sqnr_db

# the demo, small: 24 eval images, 16 calibration images, no timing
SMALL = ("recipe=demo", "precision=int8", "dataset.generator.eval_count=24", "dataset.generator.calib_count=16",
         "dataset.calib.count=16", "benchmark.enabled=false")


# ------------------------------------------------------------------------------------------ the numbers

def test_sqnr_and_cosine_match_their_definitions():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(2, 8, 5, 5)).astype(np.float32)
    got = ref + rng.normal(scale=0.1, size=ref.shape).astype(np.float32)
    r, g = ref.astype(np.float64).ravel(), got.astype(np.float64).ravel()
    assert sqnr_db(ref, got) == pytest.approx(10 * np.log10((r ** 2).sum() / ((r - g) ** 2).sum()), rel=1e-9)
    assert cosine(ref, got) == pytest.approx(r @ g / np.linalg.norm(r) / np.linalg.norm(g), rel=1e-12)
    assert sqnr_db(ref, ref) == EXACT_DB


def test_layer_stats_over_images_equal_the_figures_of_all_images_together():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(2, 100)), rng.normal(size=(2, 100))
    noisy = a + 0.05 * b
    stats = LayerStats()
    for k in range(2):
        stats.add("x", "Conv", a[k], noisy[k])
    layer = stats.layers()[0]
    assert layer["sqnr_db"] == pytest.approx(sqnr_db(a, noisy), abs=1e-3)
    assert layer["cosine"] == pytest.approx(cosine(a, noisy), abs=1e-7)


def test_rank_charges_a_layer_only_the_noise_it_adds_and_skips_float_layers():
    layers = [{"name": "a", "op": "Conv", "cosine": 1, "sqnr_db": 40.0, "inputs": []},
              {"name": "b", "op": "Conv", "cosine": 1, "sqnr_db": 20.0, "inputs": ["a"]},       # adds most
              {"name": "c", "op": "Relu", "cosine": 1, "sqnr_db": 19.9, "inputs": ["b"]},       # inherits it
              {"name": "d", "op": "Conv", "cosine": 1, "sqnr_db": 10.0, "inputs": ["c"], "quantized": False}]
    own = own_sqnr_db(layers)
    assert own["c"] > 30 > own["b"]
    assert rank(layers)[0] == "b" and "d" not in rank(layers)


def test_rank_puts_quantized_outputs_first_and_the_first_try_takes_them_together():
    from yolobuild.accuracy.search import _first_sizes

    layers = [{"name": "a", "op": "Conv", "cosine": 1, "sqnr_db": 18.0, "inputs": [], "local_sqnr_db": 15.0},
              {"name": "b", "op": "Conv", "cosine": 1, "sqnr_db": 17.0, "inputs": ["a"], "local_sqnr_db": 16.0},
              {"name": "out1", "op": "Conv", "cosine": 1, "sqnr_db": 25.0, "inputs": ["b"], "local_sqnr_db": 22.0},
              {"name": "out2", "op": "Conv", "cosine": 1, "sqnr_db": 26.0, "inputs": ["b"], "local_sqnr_db": 13.0},
              {"name": "out3", "op": "Conv", "cosine": 1, "sqnr_db": 9.0, "inputs": ["b"], "quantized": False}]
    ranked = rank(layers)
    assert ranked == ["out2", "out1", "a", "b"]          # outputs first (worst first), float ones left out
    assert _first_sizes(layers, ranked) == 2
    no_outputs_known = [{k: v for k, v in layer.items() if k != "inputs"} for layer in layers]
    assert rank(no_outputs_known)[0] == "out2"          # by local SQNR alone; the first try: within 3 dB of it
    assert _first_sizes(no_outputs_known, rank(no_outputs_known)) == 3


def _two_convs(path):
    """x -> Conv(1x1, w1) -> Relu -> Conv(1x1, w2) -> y, with the intermediate tensors named."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1, w2 = rng.normal(size=(4, 3, 1, 1)).astype(np.float32), rng.normal(size=(2, 4, 1, 1)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1"], ["c1"]), helper.make_node("Relu", ["c1"], ["r1"]),
         helper.make_node("Conv", ["r1", "w2"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 5, 5])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return w1, w2


def test_float_layers_runs_one_layer_alone_on_given_inputs(tmp_path):
    from yolobuild.runtime.float_layers import FloatLayers

    w1, w2 = _two_convs(tmp_path / "m.onnx")
    layers = FloatLayers(tmp_path / "m.onnx")
    fed = np.random.default_rng(1).normal(size=4 * 25).astype(np.float32)   # flat, as a vendor dump is
    got = layers.run("y", {"r1": fed})
    by_hand = np.einsum("oc,chw->ohw", w2[:, :, 0, 0], fed.reshape(4, 5, 5))[None]
    assert np.allclose(got, by_hand, atol=1e-5)
    two = layers.run("r1", {"x": np.ones((1, 3, 5, 5), np.float32)})      # through Conv and Relu
    assert np.allclose(two, np.maximum(np.einsum("oc,chw->ohw", w1[:, :, 0, 0], np.ones((3, 5, 5))), 0)[None], atol=1e-5)
    assert layers.run("y", {"c1": fed}) is not None                          # Relu then Conv from c1
    assert layers.run("y", {"r1": fed[:10]}) is None                         # wrong size: not computable


# ------------------------------------------------------------------------------------------ validate

@pytest.mark.parametrize("extra, fragment", [
    (("accuracy.max_drop=-1",), "accuracy.max_drop: -1 must be a positive number"),
    (("precision=fp32", "accuracy.max_drop=0.5"), "precision fp32 is not calibrated"),
    (("accuracy.kept_float=nowhere.yaml",), "accuracy.kept_float: 'nowhere.yaml' does not exist"),
    (("target=mlu220", "accuracy.calibration=auto"), "declares no calibration algorithms"),
    (("evaluate.enabled=false", "accuracy.max_drop=0.5"), "needs the measured accuracy"),
])
def test_validate_refuses_accuracy_settings_that_cannot_act(tmp_path, extra, fragment):
    code, out, err = cli_in_process("validate", "recipe=demo", "precision=int8", *extra,
                                    f"workspace.path={tmp_path / 'ws'}")
    assert code == 2, out + err
    assert fragment in err and "Traceback" not in err, err


def test_validate_refuses_a_kept_float_file_without_a_list_of_names(tmp_path):
    bad = tmp_path / "kept.yaml"
    bad.write_text("keep_float: [1, 2]\n")
    code, _, err = cli_in_process("validate", "recipe=demo", "precision=int8", f"accuracy.kept_float={bad}",
                                  f"workspace.path={tmp_path / 'ws'}")
    assert code == 2 and "list of layer names" in err, err
    assert len(err.strip().splitlines()) == 1


def test_plan_has_layer_error_for_int8_only(tmp_path):
    from yolobuild.api import validate
    from yolobuild.plan.lower import lower

    kinds = lambda *o: [op.kind for op in lower(validate(overrides=["recipe=demo", *o])).ops]  # noqa: E731
    assert "layer_error" in kinds("precision=int8")
    assert "layer_error" not in kinds("precision=fp32")
    assert "layer_error" not in kinds("precision=int8", "accuracy.layers=false")


# ------------------------------------------------------------------------------------------ builds

def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def _cache_path(cache: Path, manifest: dict, op_id: str, name: str) -> Path:
    out = next(o for o in manifest["ops"] if o["id"] == op_id)["outputs"][name]
    return cache / out["path"] if out["in"] == "cache" else Path(out["path"])


@pytest.fixture(scope="module")
def demo_int8(tmp_path_factory):
    root = tmp_path_factory.mktemp("accuracy")
    args = (*SMALL, f"workspace.path={root / 'ws'}", f"cache.dir={root / 'cache'}")
    code, out, err = cli_in_process(*args)
    assert code == 0, out + err
    return root, args, built_folder(root / "ws", out)


def test_layer_error_agrees_with_onnxruntime_run_here(demo_int8):
    """A mid-network conv's SQNR recomputed from scratch: the exported float ONNX and the quantized ONNX,
    each with that one tensor made an output, on the same probe images."""
    import onnx
    import onnxruntime as ort

    from yolobuild.runtime.arrays import canvas_to_input, load_npz

    root, _, folder = demo_int8
    m = _manifest(folder)
    acc = m["accuracy"]
    assert acc["layers"] and len(acc["worst"]) == 5 and acc["kept_float"] == []
    assert acc["layers"] == json.loads((folder / "layers.json").read_text())["layers"]
    layer = next(lay for lay in acc["layers"] if lay["name"] == "/model.6/cv1/conv/Conv")
    qdq = onnx.load(str(_cache_path(root / "cache", m, "quantize", "model.onnx")))
    conv_out = next(n for n in qdq.graph.node if n.name == layer["name"]).output[0]
    q = next(n for n in qdq.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == conv_out)
    dq = next(n for n in qdq.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == q.output[0])
    fp = onnx.load(str(folder / "model.onnx"))
    fp_out = next(n for n in fp.graph.node if n.name == layer["name"]).output[0]

    def run(proto, tensor, x):
        proto.graph.output.append(onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None))
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
        return sess.run([tensor], {sess.get_inputs()[0].name: x})[0]

    images = load_npz(_cache_path(root / "cache", m, "prepare_inputs", "probe.npz"))["images"][:acc["images"]]
    x = canvas_to_input(images, 1 / 255.0)
    ref = np.concatenate([run(onnx.load(str(folder / "model.onnx")), fp_out, x[k:k + 1]) for k in range(len(x))])
    got = np.concatenate([run(onnx.load(str(_cache_path(root / "cache", m, "quantize", "model.onnx"))),
                              dq.output[0], x[k:k + 1]) for k in range(len(x))])
    r, g = ref.astype(np.float64).ravel(), got.astype(np.float64).ravel()
    expected = 10 * np.log10((r ** 2).sum() / ((r - g) ** 2).sum())
    assert layer["sqnr_db"] == pytest.approx(expected, abs=0.05)
    assert 5 < expected < 60                      # quantized: a real, finite error
    del fp


def test_keeping_the_worst_layer_in_float_removes_its_error_and_recovers_accuracy(demo_int8):
    """Head quantized (fp32_head=false): the layer the ranking puts first, kept in float, no longer carries a
    quantization error of its own, the measured accuracy recovers, and only the quantize side reruns."""
    root, args, _ = demo_int8
    head = (*args, "backend.options.fp32_head=false")
    code, out, err = cli_in_process(*head)
    assert code == 0, out + err
    m0 = _manifest(built_folder(root / "ws", out))
    name = m0["accuracy"]["worst"][0]
    before = next(lay for lay in m0["accuracy"]["layers"] if lay["name"] == name)
    code, out, err = cli_in_process(*head, f"backend.options.keep_float=[{name}]")
    assert code == 0, out + err
    m1 = _manifest(built_folder(root / "ws", out))
    after = next(lay for lay in m1["accuracy"]["layers"] if lay["name"] == name)
    assert m1["accuracy"]["kept_float"] == [name]
    assert before["quantized"] is True and before["local_sqnr_db"] < 25
    assert after["quantized"] is False and "local_sqnr_db" not in after, after
    assert m1["metrics"]["delta_mAP50_95"] > m0["metrics"]["delta_mAP50_95"], (m0["metrics"], m1["metrics"])
    status = {o["id"]: o["status"] for o in m1["ops"]}
    assert status["calibrate"] == status["reference"] == status["export_onnx"] == "cached"
    assert status["quantize"] == "ran"


def test_unknown_keep_float_name_is_one_line(demo_int8):
    _, args, _ = demo_int8
    code, out, err = cli_in_process(*args, "backend.options.keep_float=[no_such_node]")
    assert code == 2 and "backend.options.keep_float: 'no_such_node' is not a node" in err, out + err
    assert "Traceback" not in err


def test_max_drop_search_keeps_layers_until_within_bound_and_the_file_makes_the_next_build_cached(demo_int8):
    """Head quantized (fp32_head=false) the demo loses more than the bound; the search keeps the layers its
    layer_error ranks worst until the measured delta is within it, then the written file rebuilds cached."""
    root, args, _ = demo_int8
    bound = 0.5
    search = (*args, "backend.options.fp32_head=false", f"accuracy.max_drop={bound}", "accuracy.max_tries=4")
    code, out, err = cli_in_process(*search)
    assert code == 0, out + err
    folder = built_folder(root / "ws", out)
    acc = _manifest(folder)["accuracy"]
    tries = acc["tries"]
    assert tries[0]["delta"] < -bound and tries[0]["kept"] == 0, tries     # the default misses the bound
    assert acc["within_bound"] is True, acc.get("why")
    chosen = tries[acc["chosen_try"] - 1]
    assert chosen["delta"] >= -bound and chosen["kept"] > 0
    assert _manifest(folder)["metrics"]["delta_mAP50_95"] == chosen["delta"]   # the folder holds the chosen try
    assert acc["kept_float"] == chosen["keep_float"]
    kept_file = folder / "kept_float.yaml"
    import yaml

    written = yaml.safe_load(kept_file.read_text())
    assert written == {"toolchain": "onnxruntime", "keep_float": chosen["keep_float"]}
    # the reviewed file, committed elsewhere: the next build keeps those layers directly, every op cached
    committed = root / "deploy" / "kept.yaml"
    committed.parent.mkdir(exist_ok=True)
    committed.write_text(kept_file.read_text())
    code, out, err = cli_in_process(*search, f"accuracy.kept_float={committed}")
    assert code == 0, out + err
    again = _manifest(built_folder(root / "ws", out))
    assert [o["status"] for o in again["ops"] if o["status"] != "cached"] == []
    assert len(again["accuracy"]["tries"]) == 1 and again["accuracy"]["tries"][0]["cached"]
    assert again["metrics"]["delta_mAP50_95"] == chosen["delta"]


def test_calibration_auto_picks_by_measured_delta_and_survives_a_crashing_choice(demo_int8, monkeypatch):
    import dataclasses

    from yolobuild.toolchains import registry

    root, args, _ = demo_int8
    decl = registry.get("onnxruntime")
    crashing = dataclasses.replace(decl.accuracy, calibration_choices=("minmax", "no_such_method", "percentile"))
    monkeypatch.setitem(registry.shipped(), "onnxruntime", dataclasses.replace(decl, accuracy=crashing))
    code, out, err = cli_in_process(*args, "accuracy.calibration=auto")
    assert code == 0, out + err
    m = _manifest(built_folder(root / "ws", out))
    tries = {t["calibration"]: t for t in m["accuracy"]["tries"]}
    assert list(tries) == ["minmax", "no_such_method", "percentile"]
    assert tries["no_such_method"]["status"] == "failed" and tries["no_such_method"]["reason"]
    measured = {k: t["delta"] for k, t in tries.items() if t["status"] != "failed"}
    best = max(measured, key=measured.get)
    assert m["accuracy"]["tries"][m["accuracy"]["chosen_try"] - 1]["calibration"] == best
    assert m["metrics"]["delta_mAP50_95"] == measured[best]
    quantize = next(o for o in m["ops"] if o["id"] == "quantize")
    assert quantize["results"]["calibrate_method"] == best
    assert "Accuracy search" in (built_folder(root / "ws", out) / "report.md").read_text()
