"""The DPK manifest (dataloop.json) against the code it describes, parsed by dtlpy's own `dl.Dpk.from_json`.

Offline: dtlpy is imported with a temporary DATALOOP_PATH and HOME, and nothing here talks to the platform.
Every assertion says what is wrong and where.
"""

from __future__ import annotations

import atexit
import copy
import inspect
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# dtlpy reads DATALOOP_PATH and writes a cookie, logs and an object cache there and under ~/.dataloop when it is
# imported; it gets a throwaway directory for both. Both variables are put back right after the import, so nothing
# else in the session (conftest.py's sandbox, sam2_adapter.models' ~/.cache default) sees a change. When dtlpy was
# already imported by another test module, this is a no-op.
_DTLPY_HOME = tempfile.mkdtemp(prefix="sam2-manifest-test-")
atexit.register(shutil.rmtree, _DTLPY_HOME, ignore_errors=True)
_saved_env = {key: os.environ.get(key) for key in ("DATALOOP_PATH", "HOME")}
os.environ["DATALOOP_PATH"] = os.path.join(_DTLPY_HOME, ".dataloop")
os.environ["HOME"] = _DTLPY_HOME
try:
    import dtlpy as dl
finally:
    for key, value in _saved_env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value

import model_adapter  # noqa: E402  (after the dtlpy import above)
from model_adapter import ModelAdapter  # noqa: E402
from sam2_adapter.config import Settings  # noqa: E402
from sam2_adapter.errors import InputError  # noqa: E402
from sam2_adapter.models import CHECKPOINTS  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
MANIFEST_PATH = REPO / "dataloop.json"

MODULE_NAME = "sam2-module"
# Every function the manifest must offer. `track` is the video tracker; it is expected on ModelAdapter with the
# signature track(self, dl, item_stream_url, bbs, start_frame, frame_duration=60, progress=None).
EXPECTED_FUNCTIONS = ["box_to_segmentation", "box_to_polygon", "predict_interactive_editing", "track", "track_video",
                      "predict_items", "predict_dataset"]
# Parameters the Dataloop runner fills in itself; they are never manifest inputs.
INJECTED = {"self", "dl", "progress", "context"}
# dtlpy's base-class functions and the adapter method each of them calls (dtlpy's own
# PackageModule.from_entry_point drops predict_items from a module whose adapter does not implement `predict`).
BASE_FUNCTION_HOOKS = {"predict_items": "predict", "predict_dataset": "predict"}
IO_TYPES = {t.value for t in dl.PackageInputType}

BOX_TOOLBARS = {"Box to Segmentation": "box_to_segmentation", "Box to Polygon": "box_to_polygon"}
TRACKER_INPUTS = ["item_stream_url", "bbs", "start_frame", "frame_duration"]


# -- helpers ---------------------------------------------------------------------------------------------------------
def load_raw() -> dict:
    with open(MANIFEST_PATH) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def raw() -> dict:
    return load_raw()


@pytest.fixture(scope="module")
def dpk(raw) -> dl.Dpk:
    # A copy: dtlpy entities fill defaults into the dict they wrap (Components even adds a stray "pipelines" key).
    return dl.Dpk.from_json(_json=copy.deepcopy(raw), client_api=dl.client_api, project=None)


@pytest.fixture(scope="module")
def module(dpk):
    modules = dpk.components.modules
    names = [m.name for m in modules]
    assert names == [MODULE_NAME], f"dataloop.json: expected exactly one module {MODULE_NAME!r}, found {names}"
    return modules[0]


def manifest_function(module, name: str):
    found = [f for f in module.functions if f.name == name]
    assert found, (f"dataloop.json: module {module.name!r} has no function {name!r} "
                   f"(it has {[f.name for f in module.functions]})")
    return found[0]


def adapter_method(name: str):
    method = getattr(ModelAdapter, name, None)
    assert callable(method), (f"dataloop.json names function {name!r}, but model_adapter.ModelAdapter has no method "
                              f"{name!r}: the platform would fail every execution of it")
    return method


def python_inputs(method) -> tuple[list[str], list[str]]:
    """(every parameter a caller can pass by name, the ones without a default), the injected ones left out."""
    names, required = [], []
    for p in inspect.signature(method).parameters.values():
        if p.name in INJECTED or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY):
            continue
        names.append(p.name)
        if p.default is p.empty:
            required.append(p.name)
    return names, required


def is_dtlpy_base_function(name: str) -> bool:
    return getattr(ModelAdapter, name, None) is getattr(dl.BaseModelAdapter, name, object())


def contains(value, wanted: dict) -> bool:
    """Whether `wanted`'s key/value pairs appear together in some dict nested anywhere in `value`."""
    if isinstance(value, dict):
        if all(value.get(k) == v for k, v in wanted.items()):
            return True
        return any(contains(v, wanted) for v in value.values())
    if isinstance(value, list):
        return any(contains(v, wanted) for v in value)
    return False


# -- the package -----------------------------------------------------------------------------------------------------
def test_manifest_parses_with_dtlpy(raw, dpk):
    assert dpk.name == "sam2-adapter", f"dataloop.json: name is {dpk.name!r}, expected 'sam2-adapter'"
    assert dpk.display_name == "SAM 2", f"dataloop.json: displayName is {dpk.display_name!r}, expected 'SAM 2'"
    assert dpk.version, "dataloop.json: no version"
    assert dpk.scope in {s.value for s in dl.entities.AppScope}, (
        f"dataloop.json: scope {dpk.scope!r} is not one of dtlpy's AppScope values")
    attributes = dpk.attributes or {}
    for key, value in {"License": "Apache 2.0", "Provider": "Meta", "Category": "Model"}.items():
        assert attributes.get(key) == value, f"dataloop.json: attributes.{key} is {attributes.get(key)!r}, expected {value!r}"
    assert {"Image", "Video"} <= set(attributes.get("Media Type") or []), (
        f"dataloop.json: attributes['Media Type'] is {attributes.get('Media Type')!r}, expected Image and Video")
    # A misspelt component key (e.g. "computeConfig") would be silently ignored by dtlpy and the platform.
    known = {v.location[0] for v in vars(dl.entities.Components).values() if isinstance(getattr(v, "location", None), list)}
    unknown = sorted(set(raw.get("components", {})) - known)
    assert not unknown, f"dataloop.json: components has keys dtlpy's Components does not know: {unknown} (known: {sorted(known)})"


def test_module_is_the_model_adapter(module, dpk):
    assert module.class_name == "ModelAdapter", (
        f"dataloop.json: module {module.name!r} has className {module.class_name!r}, expected 'ModelAdapter'")
    entry = REPO / module.entry_point
    assert entry.is_file(), f"dataloop.json: module entryPoint {module.entry_point!r} is not a file in the repository"
    assert Path(model_adapter.__file__).resolve() == entry.resolve(), (
        f"dataloop.json: entryPoint {module.entry_point!r} is not the model_adapter.py the tests import")
    assert issubclass(getattr(model_adapter, module.class_name), dl.BaseModelAdapter), (
        f"model_adapter.{module.class_name} is not a dl.BaseModelAdapter")
    init = [(i.name, i.type) for i in module.init_inputs]
    assert init == [("model_entity", "Model")], (
        f"dataloop.json: module initInputs are {init}, expected [('model_entity', 'Model')] as every model adapter")
    configs = [c.name for c in dpk.components.compute_configs]
    assert module.compute_config in configs, (
        f"dataloop.json: module computeConfig {module.compute_config!r} is not one of computeConfigs {configs}")


def test_module_offers_exactly_the_expected_functions(module):
    names = [f.name for f in module.functions]
    assert len(names) == len(set(names)), f"dataloop.json: duplicate function names in {names}"
    missing = sorted(set(EXPECTED_FUNCTIONS) - set(names))
    extra = sorted(set(names) - set(EXPECTED_FUNCTIONS))
    assert not missing and not extra, (
        f"dataloop.json: module functions differ from the expected list: missing {missing}, unexpected {extra} "
        f"(update EXPECTED_FUNCTIONS in this test if the change is intended)")


@pytest.mark.parametrize("name", EXPECTED_FUNCTIONS)
def test_function_matches_the_adapter(module, name):
    function = manifest_function(module, name)
    method = adapter_method(name)
    inputs = [i.name for i in function.inputs]
    assert len(inputs) == len(set(inputs)), f"dataloop.json: function {name!r} lists an input twice: {inputs}"
    for io in [*function.inputs, *function.outputs]:
        assert io.name, f"dataloop.json: function {name!r} has an input or output without a name"
        assert io.type in IO_TYPES, (
            f"dataloop.json: function {name!r} {io.name!r} has type {io.type!r}, not a dl.PackageInputType value")
    names, required = python_inputs(method)
    not_params = [n for n in inputs if n not in names]
    assert not not_params, (
        f"dataloop.json: function {name!r} has inputs {not_params} that are not parameters of "
        f"ModelAdapter.{name}{inspect.signature(method)}")
    unlisted = [n for n in required if n not in inputs]
    assert not unlisted, (
        f"ModelAdapter.{name} requires {unlisted}, which dataloop.json does not list as inputs: "
        f"every execution would fail with a missing argument")
    if is_dtlpy_base_function(name):
        # dtlpy declares these itself (@Package.decorators.function); the manifest must say the same.
        declared = getattr(getattr(dl.BaseModelAdapter, name), "__dtlpy__", {})
        want_in = [(i["name"], i["type"]) for i in declared.get("input", [])]
        got_in = [(i.name, i.type) for i in function.inputs]
        assert got_in == want_in, f"dataloop.json: {name!r} inputs are {got_in}; dtlpy declares {want_in}"
        want_out = [(o["name"], o["type"]) for o in declared.get("output", [])]
        got_out = [(o.name, o.type) for o in function.outputs]
        assert got_out == want_out, f"dataloop.json: {name!r} outputs are {got_out}; dtlpy declares {want_out}"
    else:
        # Our own methods: the manifest offers every parameter, in the method's order.
        assert inputs == names, (
            f"dataloop.json: function {name!r} inputs are {inputs}, but ModelAdapter.{name} takes {names} "
            f"(besides {sorted(INJECTED)}, which the runner injects)")
        assert function.outputs, f"dataloop.json: function {name!r} declares no output"


@pytest.mark.parametrize("name", sorted(BASE_FUNCTION_HOOKS))
def test_base_functions_are_backed_by_the_adapter(module, name):
    """dtlpy's predict_items/predict_dataset only work when the adapter implements the hook they call."""
    manifest_function(module, name)
    hook = BASE_FUNCTION_HOOKS[name]
    assert getattr(ModelAdapter, hook) is not getattr(dl.BaseModelAdapter, hook), (
        f"dataloop.json offers {name!r}, but ModelAdapter does not implement `{hook}`: dtlpy's BaseModelAdapter.{hook} "
        f"raises NotImplementedError, so every {name} execution would fail (implement ModelAdapter.{hook} or remove "
        f"{name!r} from the manifest and from EXPECTED_FUNCTIONS)")


# -- models ----------------------------------------------------------------------------------------------------------
def test_models_carry_the_full_default_configuration(dpk, module):
    models = dpk.components.models
    assert models, "dataloop.json: components.models is empty"
    names = [m.get("name") for m in models]
    assert len(names) == len(set(names)), f"dataloop.json: model names repeat: {names}"
    defaults = Settings().as_dict()
    offered = []
    for model in models:
        where = f"dataloop.json model {model.get('name')!r}"
        assert model.get("moduleName") == module.name, (
            f"{where}: moduleName {model.get('moduleName')!r} is not the module {module.name!r}")
        for key, value in {"scope": "project", "status": "pre-trained", "inputType": "image"}.items():
            assert model.get(key) == value, f"{where}: {key} is {model.get(key)!r}, expected {value!r}"
        assert model.get("outputType") in {t.value for t in dl.AnnotationType}, (
            f"{where}: outputType {model.get('outputType')!r} is not a dl.AnnotationType value")
        assert model.get("description"), f"{where}: no description"
        config = model.get("configuration") or {}
        missing = sorted(set(defaults) - set(config))
        extra = sorted(set(config) - set(defaults))
        changed = {k: (config[k], defaults[k]) for k in defaults if k != "model" and k in config and config[k] != defaults[k]}
        assert not missing and not extra and not changed, (
            f"{where}: configuration is not Settings().as_dict() (besides `model`): missing {missing}, "
            f"unknown {extra}, different (manifest, default) {changed}")
        assert config["model"] in CHECKPOINTS, (
            f"{where}: configuration.model {config['model']!r} is not in sam2_adapter.models.CHECKPOINTS "
            f"({sorted(CHECKPOINTS)})")
        assert Settings.from_mapping(config).as_dict() == config, f"{where}: configuration does not round-trip Settings"
        offered.append(config["model"])
    for checkpoint in (Settings().model, "sam2.1_hiera_large"):
        assert checkpoint in offered, f"dataloop.json: no model uses checkpoint {checkpoint!r} (offered: {offered})"
    assert models[0]["configuration"]["model"] == Settings().model, (
        f"dataloop.json: the first model ({offered[0]!r}) should be the default checkpoint {Settings().model!r}")


# -- toolbars --------------------------------------------------------------------------------------------------------
def test_toolbars_invoke_existing_functions(dpk, module):
    toolbars = dpk.components.toolbars
    assert toolbars, "dataloop.json: components.toolbars is empty"
    services = {s.get("name"): s for s in dpk.components.services}
    for toolbar in toolbars:
        where = f"dataloop.json toolbar {toolbar.display_name!r}"
        invoke = toolbar.invoke or {}
        assert invoke.get("type") == "function", f"{where}: invoke.type is {invoke.get('type')!r}, expected 'function'"
        parts = str(invoke.get("namespace", "")).split(".")
        assert len(parts) == 3, f"{where}: namespace {invoke.get('namespace')!r} is not <service>.<module>.<function>"
        service, module_name, function = parts
        assert service in services, f"{where}: service {service!r} is not one of components.services {sorted(services)}"
        assert services[service].get("moduleName") == module_name, (
            f"{where}: service {service!r} runs module {services[service].get('moduleName')!r}, not {module_name!r}")
        assert module_name == module.name, f"{where}: module {module_name!r} is not {module.name!r}"
        manifest_function(module, function)
        adapter_method(function)
        assert toolbar.location, f"{where}: no location"
        assert toolbar.icon and toolbar.icon.startswith("icon-dl-"), f"{where}: icon {toolbar.icon!r} is not an icon-dl-* name"


@pytest.mark.parametrize("display_name", sorted(BOX_TOOLBARS))
def test_box_toolbar(dpk, display_name):
    found = [t for t in dpk.components.toolbars if t.display_name == display_name]
    assert len(found) == 1, f"dataloop.json: expected one toolbar {display_name!r}, found {len(found)}"
    toolbar = found[0]
    where = f"dataloop.json toolbar {display_name!r}"
    function = (toolbar.invoke or {}).get("namespace", "").split(".")[-1]
    assert function == BOX_TOOLBARS[display_name], f"{where}: invokes {function!r}, expected {BOX_TOOLBARS[display_name]!r}"
    assert toolbar.location == "studioAnnotation", f"{where}: location {toolbar.location!r}, expected 'studioAnnotation'"
    assert toolbar.action == "drawAnnotation", f"{where}: action {toolbar.action!r}, expected 'drawAnnotation'"
    resources = (toolbar.conditions or {}).get("resources") or []
    by_type = {r.get("entityType"): r.get("filter") for r in resources}
    assert "annotation" in by_type and contains(by_type["annotation"], {"type": "box"}), (
        f"{where}: conditions.resources has no annotation condition on type 'box' ({resources})")
    assert "item" in by_type and contains(by_type["item"], {"metadata.system.mimetype": "image/*"}), (
        f"{where}: conditions.resources has no item condition on mimetype 'image/*' ({resources})")


def test_tracker_toolbar(dpk, module):
    found = [t for t in dpk.components.toolbars if t.location == "videoTracker"]
    assert len(found) == 1, f"dataloop.json: expected one videoTracker toolbar, found {len(found)}"
    toolbar = found[0]
    assert toolbar.display_name == "SAM 2 AI Tracker", (
        f"dataloop.json: the videoTracker toolbar is called {toolbar.display_name!r}, expected 'SAM 2 AI Tracker'")
    function = (toolbar.invoke or {}).get("namespace", "").split(".")[-1]
    assert function == "track", f"dataloop.json: the videoTracker toolbar invokes {function!r}, expected 'track'"
    track = manifest_function(module, "track")
    inputs = [i.name for i in track.inputs]
    assert inputs == TRACKER_INPUTS, f"dataloop.json: track inputs are {inputs}, the video tracker sends {TRACKER_INPUTS}"
    outputs = [o.type for o in track.outputs]
    assert outputs == ["Json"], f"dataloop.json: track outputs are {outputs}, expected one Json"


# -- compute ---------------------------------------------------------------------------------------------------------
def check_runtime(runtime: dict, where: str, version: str) -> None:
    pod_types = {p.value for p in dl.InstanceCatalog}
    assert runtime.get("podType") in pod_types, f"{where}: podType {runtime.get('podType')!r} is not one of {sorted(pod_types)}"
    assert runtime["podType"].startswith("gpu"), f"{where}: podType {runtime['podType']!r} has no GPU"
    concurrency = runtime.get("concurrency")
    assert isinstance(concurrency, int) and concurrency >= 1, f"{where}: concurrency {concurrency!r} is not a positive int"
    image = runtime.get("runnerImage")
    assert isinstance(image, str) and image, f"{where}: no runnerImage"
    assert image.rsplit(":", 1)[-1] == version, (
        f"{where}: runnerImage {image!r} is not tagged with the package version {version!r} (build it from ./Dockerfile)")
    autoscaler = runtime.get("autoscaler") or {}
    assert autoscaler, f"{where}: no autoscaler"
    types = {t.value for t in dl.KubernetesAutoscalerType}
    assert autoscaler.get("type") in types, f"{where}: autoscaler type {autoscaler.get('type')!r} is not one of {sorted(types)}"
    low, high, queue = autoscaler.get("minReplicas"), autoscaler.get("maxReplicas"), autoscaler.get("queueLength")
    assert all(isinstance(v, int) for v in (low, high, queue)), (
        f"{where}: autoscaler minReplicas/maxReplicas/queueLength must be ints, got {low!r}/{high!r}/{queue!r}")
    assert 0 <= low <= high and high >= 1 and queue >= 1, (
        f"{where}: autoscaler needs 0 <= minReplicas <= maxReplicas, maxReplicas >= 1, queueLength >= 1; "
        f"got {low}/{high}/{queue}")


def test_gpu_compute_config(dpk, module):
    configs = {c.name: c for c in dpk.components.compute_configs}
    config = configs.get(module.compute_config)
    assert config is not None, f"dataloop.json: no computeConfig named {module.compute_config!r}"
    check_runtime(config.runtime or {}, f"dataloop.json computeConfig {config.name!r}", dpk.version)
    assert isinstance(config.execution_timeout, int) and config.execution_timeout > 0, (
        f"dataloop.json computeConfig {config.name!r}: executionTimeout {config.execution_timeout!r}")


def test_studio_service(dpk, module):
    services = dpk.components.services
    assert len(services) == 1, f"dataloop.json: expected one service for the studio functions, found {len(services)}"
    service = services[0]
    where = f"dataloop.json service {service.get('name')!r}"
    assert service.get("moduleName") == module.name, f"{where}: moduleName {service.get('moduleName')!r} is not {module.name!r}"
    check_runtime(service.get("runtime") or {}, where, dpk.version)
    gpu = next(c for c in dpk.components.compute_configs if c.name == module.compute_config)
    assert service["runtime"] == gpu.runtime, (
        f"{where}: runtime differs from computeConfig {gpu.name!r}; keep them equal (one runner image, one GPU setup)")
    timeout = service.get("executionTimeout")
    assert isinstance(timeout, int) and timeout > 0, f"{where}: executionTimeout {timeout!r}"


@pytest.mark.parametrize("key, value, expected", [
    ("mask_threshold", -1.5, -1.5),  # a logit: a negative threshold grows the mask
    ("video_max_frames", "12", 12),  # numbers typed as strings in the platform's configuration editor
    ("proposal_points_per_side", 16.0, 16),
    ("box_margin", "2.5", 2.5),
])
def test_configuration_numbers_are_read_as_meant(key, value, expected):
    assert getattr(Settings.from_mapping({key: value}), key) == expected


@pytest.mark.parametrize("key, value, why", [
    ("embedding_cache_mb", 0.5, "whole number"),  # was truncated to 0: no cache at all
    ("proposal_min_mask_area", 2.7, "integer"),
    ("max_prompts_per_call", 0, "at least 1"),  # a decoder call of no prompts never ends a request
    ("polygon_tolerance", float("nan"), "finite"),
    ("polygon_min_area", -1, "negative"),
    ("box_margin", -2, "negative"),
    ("replace_boxes", 1, "true or false"),
    ("proposal_pred_iou_thresh", 2, r"\[0, 1\]"),  # the proposal keys have their own ranges
    ("proposal_points_per_side", True, "integer"),
])
def test_a_bad_configuration_number_is_refused_by_name(key, value, why):
    with pytest.raises(InputError, match=f"{key}.*{why}"):
        Settings.from_mapping({key: value})
