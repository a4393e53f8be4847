"""The model-server specs in deploy/models/ against the servers' flags, GPU memory, compose and AIMA's settings.

Why: TGI and vLLM cannot run here. A misspelt flag, token limits the launcher refuses, weights plus KV cache that do not
fit the GPUs, or compose drifting from the specs would only show on a rented GPU host, after minutes of downloading
weights. These checks catch them on a laptop. The arithmetic also renders the sizing tables of deploy/README.md, so the
documented figures are the checked ones (`test_readme_tables_are_current` prints the tables to paste when they drift).
"""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_GPU = ROOT / "compose" / "gpu.yml"
GIB = 1024**3


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


#: text-generation-launcher flags (TGI docs, reference/launcher.md, 3.x).
TGI_FLAGS = _words(
    "model-id revision validation-workers sharded num-shard quantize speculate dtype kv-cache-dtype trust-remote-code "
    "max-concurrent-requests max-best-of max-stop-sequences max-top-n-tokens max-input-tokens max-total-tokens "
    "waiting-served-ratio max-batch-prefill-tokens max-batch-total-tokens max-waiting-tokens max-batch-size "
    "cuda-graphs hostname port huggingface-hub-cache weights-cache-override disable-custom-kernels "
    "cuda-memory-fraction rope-scaling rope-factor json-output otlp-endpoint otlp-service-name cors-allow-origin "
    "api-key tokenizer-config-path disable-grammar-support max-client-batch-size lora-adapters usage-stats "
    "payload-limit enable-prefill-logprobs"
)
TGI_QUANTIZE = _words("awq compressed-tensors eetq exl2 gptq marlin bitsandbytes bitsandbytes-nf4 bitsandbytes-fp4 fp8")
#: `vllm serve` options the specs may use (vLLM docs, serve arguments).
VLLM_FLAGS = _words(
    "model served-model-name revision tokenizer dtype kv-cache-dtype quantization tensor-parallel-size "
    "pipeline-parallel-size max-model-len max-num-seqs max-num-batched-tokens gpu-memory-utilization "
    "limit-mm-per-prompt chat-template chat-template-content-format api-key host port enable-prefix-caching "
    "trust-remote-code enforce-eager"
)
VLLM_QUANTIZATION = _words("awq awq_marlin gptq gptq_marlin fp8 bitsandbytes compressed-tensors")
PROTOCOL = {"tgi": "tgi", "vllm": "openai"}
SPEC_KEYS = _words("spec_version name server image port health_path images_per_request model args sizing aima variants")
MODEL_KEYS = _words(
    "id architecture licence gated params_b context_tokens layers attention_heads kv_heads head_dim max_image_tokens "
    "prompt_format"
)
SIZING_KEYS = _words(
    "variant summary gpu_count gpu_types quantisation weights_gib disk_gb overhead_gib_per_gpu kv_budget_tokens"
)
#: Keys of the `aima` section that are deployment facts, not AIMA endpoint settings.
DEPLOY_ONLY_AIMA_KEYS = frozenset({"worker_processes"})


@dataclass(frozen=True)
class Layout:
    """One way to run a spec: its defaults, or a variant merged over them."""

    file: str
    spec: Mapping[str, Any]
    args: Mapping[str, Any]
    sizing: Mapping[str, Any]
    aima: Mapping[str, Any]
    default: bool

    @property
    def server(self) -> str:
        return str(self.spec["server"])

    @property
    def model(self) -> Mapping[str, Any]:
        model: Mapping[str, Any] = self.spec["model"]
        return model

    @property
    def id(self) -> str:
        return f"{self.file}:{self.sizing['variant']}"

    @property
    def shards(self) -> int:
        return int(self.args["num-shard" if self.server == "tgi" else "tensor-parallel-size"])

    @property
    def max_total_tokens(self) -> int:
        return int(self.args["max-total-tokens" if self.server == "tgi" else "max-model-len"])

    @property
    def memory_fraction(self) -> float:
        if self.server == "tgi":
            return float(self.args.get("cuda-memory-fraction", 1.0))
        return float(self.args.get("gpu-memory-utilization", 0.9))

    @property
    def concurrency_limit(self) -> int:
        return int(self.args["max-concurrent-requests" if self.server == "tgi" else "max-num-seqs"])

    @property
    def served_model(self) -> str:
        if self.server == "tgi":
            return str(self.args["model-id"])
        return str(self.args.get("served-model-name", self.args["model"]))

    @property
    def quantisation_flag(self) -> str | None:
        value = self.args.get("quantize" if self.server == "tgi" else "quantization")
        return None if value is None else str(value)

    @property
    def kv_bytes_per_token(self) -> int:
        """Keys and values of every layer, in the model's 16-bit dtype unless the KV cache is FP8."""
        element = 1 if str(self.args.get("kv-cache-dtype", "")).startswith("fp8") else 2
        m = self.model
        return 2 * int(m["layers"]) * int(m["kv_heads"]) * int(m["head_dim"]) * element

    def free_gib_per_gpu(self, gpu: Mapping[str, Any]) -> float:
        """What is left of one GPU for the KV cache once weights and runtime overhead are in."""
        usable = float(gpu["memory_gib"]) * self.memory_fraction
        return usable - float(self.sizing["weights_gib"]) / self.shards - float(self.sizing["overhead_gib_per_gpu"])

    def kv_capacity_tokens(self, gpu: Mapping[str, Any]) -> int:
        """Tokens the KV cache holds: each token takes kv_bytes / shards on every GPU."""
        return math.floor(self.free_gib_per_gpu(gpu) * GIB * self.shards / self.kv_bytes_per_token)


def _load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _spec_files() -> list[Path]:
    return sorted((DEPLOY / "models").glob("*.yaml"))


def _merge(base: Mapping[str, Any], override: Mapping[str, Any] | None) -> dict[str, Any]:
    """A variant's keys replace the base's; None drops the key (a flag the variant must not pass)."""
    merged = dict(base)
    for key, value in (override or {}).items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def _layouts_of(path: Path) -> Iterator[Layout]:
    spec: dict[str, Any] = _load_yaml(path)
    yield Layout(path.stem, spec, spec["args"], spec["sizing"], spec["aima"], default=True)
    for variant in spec.get("variants") or []:
        yield Layout(
            path.stem,
            spec,
            _merge(spec["args"], variant.get("args")),
            _merge(spec["sizing"], variant.get("sizing")),
            _merge(spec["aima"], variant.get("aima")),
            default=False,
        )


def _all_layouts() -> list[Layout]:
    return [layout for path in _spec_files() for layout in _layouts_of(path)]


def _gpus() -> dict[str, dict[str, Any]]:
    gpus: dict[str, dict[str, Any]] = _load_yaml(DEPLOY / "gpus.yaml")["gpus"]
    return gpus


def render_args(args: Mapping[str, Any]) -> list[str]:
    """The command line of a spec's `args`: `--flag value`, a bare flag for true, mappings as compact JSON."""
    command: list[str] = []
    for flag, value in args.items():
        if value is True:
            command.append(f"--{flag}")
        elif isinstance(value, Mapping):
            command += [f"--{flag}", json.dumps(dict(value), separators=(",", ":"))]
        elif value is not None and value is not False:
            command += [f"--{flag}", str(value)]
    return command


def endpoint_settings(aima: Mapping[str, Any]) -> dict[str, Any]:
    """The `aima` section as AIMA endpoint settings (what the worker's environment carries)."""
    return {key: value for key, value in aima.items() if key not in DEPLOY_ONLY_AIMA_KEYS}


LAYOUTS = _all_layouts()
DEFAULTS = [layout for layout in LAYOUTS if layout.default]


def _by_id(layouts: list[Layout]) -> list[Any]:
    return [pytest.param(layout, id=layout.id) for layout in layouts]


def test_one_spec_per_server_and_model() -> None:
    specs = [_load_yaml(path) for path in _spec_files()]
    pairs = sorted((spec["server"], spec["name"]) for spec in specs)
    assert pairs == [("tgi", "llama"), ("tgi", "llava"), ("vllm", "llama"), ("vllm", "llava")]
    for path, spec in zip(_spec_files(), specs, strict=True):
        assert set(spec) <= SPEC_KEYS and SPEC_KEYS - {"variants"} <= set(spec), path.name
        assert set(spec["model"]) == MODEL_KEYS, path.name
        assert set(spec["sizing"]) == SIZING_KEYS, path.name
        assert spec["spec_version"] == 1
        image, _, tag = str(spec["image"]).rpartition(":")
        assert image and tag and tag != "latest", f"{path.name}: pin the image tag"
        for variant in spec.get("variants") or []:
            assert set(variant) <= {"args", "sizing", "aima"}, path.name
            assert set(variant["sizing"]) <= SIZING_KEYS, path.name


def test_same_model_facts_on_both_servers() -> None:
    """TGI and vLLM serve the same checkpoint: its architecture facts must not differ between the two specs."""
    by_name: dict[str, list[Mapping[str, Any]]] = {}
    for path in _spec_files():
        spec = _load_yaml(path)
        by_name.setdefault(spec["name"], []).append(spec["model"])
    for name, models in by_name.items():
        assert all(model == models[0] for model in models), name


@pytest.mark.parametrize("layout", _by_id(LAYOUTS))
def test_flags_are_the_servers_own(layout: Layout) -> None:
    known = TGI_FLAGS if layout.server == "tgi" else VLLM_FLAGS
    assert set(layout.args) <= known, f"unknown flags: {sorted(set(layout.args) - known)}"
    assert all(isinstance(value, str | int | float | bool | Mapping) for value in layout.args.values())
    quantisation = layout.quantisation_flag
    if layout.server == "tgi":
        assert quantisation is None or quantisation in TGI_QUANTIZE
        # The launcher refuses --dtype together with --quantize.
        assert not ("dtype" in layout.args and quantisation), "--dtype cannot be combined with --quantize"
        assert layout.args.get("usage-stats") == "off", "TGI reports usage to Hugging Face unless told not to"
    else:
        assert quantisation is None or quantisation in VLLM_QUANTIZATION
    model_flag = "model-id" if layout.server == "tgi" else "model"
    assert layout.args[model_flag], f"--{model_flag} names the checkpoint"


@pytest.mark.parametrize("layout", _by_id(LAYOUTS))
def test_token_limits(layout: Layout) -> None:
    model, aima = layout.model, layout.aima
    total = layout.max_total_tokens
    assert total <= int(model["context_tokens"]), "beyond the model's context"
    if layout.server == "tgi":
        max_input = int(layout.args["max-input-tokens"])
        assert total > max_input, "--max-total-tokens must leave room for new tokens"
        # The launcher refuses a prefill budget below the longest input.
        assert int(layout.args["max-batch-prefill-tokens"]) >= max_input
        assert int(aima["max_input_tokens"]) <= max_input
        prompt_room = max_input
    else:
        prompt_room = total - int(aima["max_new_tokens"])
    assert int(aima["max_input_tokens"]) + int(aima["max_new_tokens"]) <= total
    images = int(layout.spec["images_per_request"])
    # One image is max_image_tokens of prompt; the text of the question must still fit beside it.
    assert images * int(model["max_image_tokens"]) + 256 <= prompt_room
    if layout.server == "vllm":
        limit = layout.args.get("limit-mm-per-prompt")
        assert (dict(limit) if limit else {}) == ({"image": images} if images else {})


@pytest.mark.parametrize("layout", _by_id(LAYOUTS))
def test_shards_match_gpus_and_heads(layout: Layout) -> None:
    assert layout.shards == int(layout.sizing["gpu_count"])
    # Tensor parallelism splits attention and KV heads evenly.
    assert int(layout.model["attention_heads"]) % layout.shards == 0
    assert int(layout.model["kv_heads"]) % layout.shards == 0


@pytest.mark.parametrize("layout", _by_id(LAYOUTS))
def test_weights_and_kv_budget_fit_every_listed_gpu(layout: Layout) -> None:
    gpus = _gpus()
    sizing = layout.sizing
    budget = int(sizing["kv_budget_tokens"])
    # Both servers refuse to start when the KV cache cannot hold one full-length sequence.
    assert budget >= layout.max_total_tokens
    assert sizing["gpu_types"], "name the GPU types this layout is sized for"
    for name in sizing["gpu_types"]:
        gpu = gpus[name]
        free = layout.free_gib_per_gpu(gpu)
        needed = budget * layout.kv_bytes_per_token / layout.shards / GIB
        assert free >= needed, (
            f"{name}: {gpu['memory_gib']} GiB x {layout.memory_fraction} - weights {sizing['weights_gib']} GiB / "
            f"{layout.shards} - overhead {sizing['overhead_gib_per_gpu']} GiB leaves {free:.1f} GiB for the KV cache, "
            f"{needed:.1f} GiB needed for {budget} tokens"
        )
        if layout.quantisation_flag == "fp8":
            assert gpu["fp8"], f"{name} has no FP8 tensor cores"


@pytest.mark.parametrize("layout", _by_id(LAYOUTS))
def test_weights_match_parameters_and_quantisation(layout: Layout) -> None:
    """16-bit weights are 2 bytes a parameter; quantised ones fit between 4 and 8.5 bits a parameter."""
    params = float(layout.model["params_b"]) * 1e9
    weights = float(layout.sizing["weights_gib"]) * GIB
    if str(layout.sizing["quantisation"]).startswith("none"):
        assert weights == pytest.approx(params * 2, rel=0.01)
    else:
        assert params * 4 / 8 <= weights <= params * 8.5 / 8
    assert float(layout.sizing["disk_gb"]) * 1e9 >= weights * 0.99


@pytest.mark.parametrize("layout", _by_id(LAYOUTS))
def test_aima_endpoint_settings_fit_the_server(layout: Layout) -> None:
    aima = layout.aima
    assert aima["protocol"] == PROTOCOL[layout.server]
    assert aima["model"] == layout.served_model
    if layout.server == "tgi":
        assert aima["prompt_format"] == layout.model["prompt_format"]
    else:
        assert "prompt_format" not in aima, "OpenAI-compatible servers apply the chat template themselves"
    # Every process holds max_concurrency requests: together they stay within what the server admits at once.
    assert int(aima["max_concurrency"]) * int(aima["worker_processes"]) <= layout.concurrency_limit
    assert float(aima["read_timeout_s"]) <= float(aima["request_timeout_s"])
    url = urlsplit(str(aima["url"]))
    assert url.port == int(layout.spec["port"]) and not url.path


@pytest.mark.parametrize("layout", _by_id(LAYOUTS))
def test_aima_endpoint_settings_validate(layout: Layout) -> None:
    settings = importlib.import_module("aima.settings")
    model = getattr(settings, "EndpointSettings", None)
    if model is None:
        pytest.skip("aima.settings has no EndpointSettings")
    model.model_validate(endpoint_settings(layout.aima))
    try:
        prompts = importlib.import_module("aima.inference.prompts")
    except ImportError:
        return
    # Without prompt_format AIMA derives the format from the model name: it must agree with the spec.
    assert prompts.format_for_model(layout.aima["model"]) == layout.model["prompt_format"]


def _compose() -> dict[str, Any]:
    compose: dict[str, Any] = _load_yaml(COMPOSE_GPU)
    return compose


def _service_name(layout: Layout) -> str:
    host = urlsplit(str(layout.aima["url"])).hostname
    assert host
    return host


def _device_ids(service: Mapping[str, Any]) -> list[str]:
    (device,) = service["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    return [str(i) for i in device["device_ids"]]


def test_compose_has_one_service_per_spec() -> None:
    assert set(_compose()["services"]) == {_service_name(layout) for layout in DEFAULTS}


@pytest.mark.parametrize("layout", _by_id(DEFAULTS))
def test_compose_service_runs_the_spec(layout: Layout) -> None:
    service = _compose()["services"][_service_name(layout)]
    assert service["image"] == layout.spec["image"]
    assert all(isinstance(part, str) for part in service["command"]), "quote numbers and 'off' in compose"
    assert service["command"] == render_args(layout.args)
    assert set(service["profiles"]) == {layout.server, f"{layout.server}-{layout.spec['name']}"}
    assert len(_device_ids(service)) == layout.shards
    (port,) = service["ports"]
    assert port.rsplit(":", 1)[1] == str(layout.spec["port"])
    probe = " ".join(service["healthcheck"]["test"])
    assert f":{layout.spec['port']}{layout.spec['health_path']}" in probe
    assert service["environment"]["HF_HOME"] == "/data"
    assert any(volume.endswith(":/data") for volume in service["volumes"])
    if layout.server == "vllm":
        assert service["environment"]["VLLM_NO_USAGE_STATS"] == "1"
        template = layout.args.get("chat-template")
        if template:
            (mount,) = [v for v in service["volumes"] if v.endswith(":/templates:ro")]
            source = (COMPOSE_GPU.parent / mount.split(":")[0]).resolve()
            assert (source / Path(str(template)).relative_to("/templates")).is_file()


def test_compose_services_of_a_profile_use_distinct_gpus() -> None:
    services = _compose()["services"]
    for profile in {"tgi", "vllm"}:
        used: list[str] = []
        for service in services.values():
            if profile in service["profiles"]:
                used += _device_ids(service)
        assert len(used) == len(set(used)), f"profile {profile} puts two servers on one GPU"


def _env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value
    return values


@pytest.mark.parametrize("server", ["tgi", "vllm"])
def test_aima_env_files_match_the_specs(server: str) -> None:
    expected: dict[str, str] = {}
    for layout in DEFAULTS:
        if layout.server == server:
            prefix = f"AIMA_INFERENCE__ENDPOINTS__{str(layout.spec['name']).upper()}__"
            expected |= {prefix + key.upper(): str(value) for key, value in endpoint_settings(layout.aima).items()}
    env = _env_file(DEPLOY / "aima" / f"{server}.env")
    assert env == expected
    settings = importlib.import_module("aima.settings")
    inference = getattr(settings, "InferenceSettings", None)
    if inference is None:
        pytest.skip("aima.settings has no InferenceSettings")
    endpoints: dict[str, dict[str, str]] = {}
    for key, value in env.items():
        _, _, name, field = key.lower().split("__")
        endpoints.setdefault(name, {})[field] = value
    parsed = inference.model_validate({"endpoints": endpoints})
    assert {parsed.vision_endpoint, parsed.fusion_endpoint} == set(parsed.endpoints)


def test_gpu_catalogue_covers_the_specs() -> None:
    gpus = _gpus()
    for name, gpu in gpus.items():
        assert set(gpu) == {"memory_gib", "arch", "fp8", "runpod", "vast"}, name
        assert gpu["runpod"] and gpu["vast"]["gpu_name"] and gpu["vast"]["min_gpu_ram_gb"] <= gpu["memory_gib"]
    named = {name for layout in LAYOUTS for name in layout.sizing["gpu_types"]}
    assert named <= set(gpus)


def test_llava_chat_template_gives_the_model_card_prompt() -> None:
    jinja2 = pytest.importorskip("jinja2")
    source = (DEPLOY / "templates" / "llava-v1.6-34b-chatml.jinja").read_text(encoding="utf-8")
    question = [{"role": "user", "content": "<image>\nWhat is shown in this image?"}]
    expected = (
        "<|im_start|>system\nAnswer the questions.<|im_end|><|im_start|>user\n<image>\nWhat is shown in this image?"
        "<|im_end|><|im_start|>assistant\n"
    )
    # Plain Jinja and the settings transformers and vLLM render chat templates with.
    for env in (jinja2.Environment(), jinja2.Environment(trim_blocks=True, lstrip_blocks=True)):
        template = env.from_string(source)
        assert template.render(messages=question, add_generation_prompt=True) == expected
        with_system = [{"role": "system", "content": "Describe."}, *question]
        assert template.render(messages=with_system, add_generation_prompt=False) == (
            "<|im_start|>system\nDescribe.<|im_end|><|im_start|>user\n<image>\nWhat is shown in this image?<|im_end|>"
        )


def sizing_table() -> str:
    """Every layout: GPUs, weights, and what the KV cache holds on the smallest GPU the layout names."""
    gpus = _gpus()
    rows = [
        "| spec | layout | GPUs | quantisation | weights GiB (per GPU) | KV per token | max total tokens "
        "| KV cache holds, tokens | full-length sequences |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for layout in LAYOUTS:
        names = layout.sizing["gpu_types"]
        smallest = min(names, key=lambda name: float(gpus[name]["memory_gib"]))
        capacity = layout.kv_capacity_tokens(gpus[smallest])
        weights = float(layout.sizing["weights_gib"])
        quantisation = str(layout.sizing["quantisation"]).split(" (")[0]
        rows.append(
            f"| {layout.file} | {layout.sizing['variant']}{' (default)' if layout.default else ''} "
            f"| {layout.shards} x {' / '.join(names)} | {quantisation} "
            f"| {weights:.1f} ({weights / layout.shards:.1f}) | {layout.kv_bytes_per_token // 1024} KiB "
            f"| {layout.max_total_tokens} | {capacity:,} on {smallest} | {capacity // layout.max_total_tokens} |"
        )
    return "\n".join(rows)


def providers_table() -> str:
    """The GPU catalogue: how RunPod and Vast.ai name each type."""
    rows = [
        "| GPU type | memory GiB | FP8 | RunPod GPU ids | Vast.ai filter |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, gpu in _gpus().items():
        vast = gpu["vast"]
        names = ",".join(vast["gpu_name"])
        rows.append(
            f"| {name} | {gpu['memory_gib']} | {'yes' if gpu['fp8'] else 'no'} "
            f"| {', '.join(f'`{runpod}`' for runpod in gpu['runpod'])} "
            f"| `gpu_name in [{names}] gpu_ram>={vast['min_gpu_ram_gb']}` |"
        )
    return "\n".join(rows)


def _between(text: str, marker: str) -> str:
    start, end = f"<!-- {marker}:begin -->\n", f"\n<!-- {marker}:end -->"
    assert start in text and end in text, f"deploy/README.md lacks the {marker} markers"
    return text.split(start, 1)[1].split(end, 1)[0]


@pytest.mark.parametrize(("marker", "render"), [("sizing", sizing_table), ("providers", providers_table)])
def test_readme_tables_are_current(marker: str, render: Any) -> None:
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    expected = render()
    assert _between(readme, marker) == expected, f"paste into deploy/README.md ({marker}):\n{expected}"
