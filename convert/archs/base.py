"""What an architecture family is, as data: its HF names, its GGUF arch, the hparam table between config.json and
GGUF keys, and per-tensor transforms. The tensor-name map itself comes from gguf-py's TensorNameMap."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from gguf import MODEL_ARCH, MODEL_ARCH_NAMES, MODEL_TENSOR, GGUFValueType, Keys, TensorNameMap

U32, F32, STR, BOOL = GGUFValueType.UINT32, GGUFValueType.FLOAT32, GGUFValueType.STRING, GGUFValueType.BOOL

# transform(array, hf_config) -> array
Transform = Callable[[np.ndarray, dict], np.ndarray]


@dataclass(frozen=True)
class HParam:
    """GGUF key template ("{arch}.context_length") <-> a key of the normalised HF config."""

    gguf: str
    hf: str  # a dotted path reaches into a nested dict (MPT's "attn_config.clip_qkv")
    vtype: GGUFValueType = U32


@dataclass(frozen=True)
class Limit:
    """A configuration an exporter gets wrong or cannot trace: modelport refuses it rather than write it."""

    applies: Callable[[dict], bool]  # the HF config -> whether this limit refuses it
    what: str  # the configuration, as the user knows it
    why: str


def _rope_type(cfg: dict) -> str | None:
    scaling = cfg.get("rope_scaling") or {}
    return scaling.get("rope_type", scaling.get("type"))


# transformers recomputes these rotary frequencies from each call's sequence length (its dynamic_rope_update); a
# traced export sees one dummy length and bakes in the short-sequence frequencies (past the switch, logits off by 5.8
# for phi3 LongRoPE and 0.8 for dynamic NTK on gemma: tests/test_family_onnx.py)
ROPE_BY_LENGTH = Limit(lambda cfg: _rope_type(cfg) in ("longrope", "dynamic"), "rope_scaling longrope/dynamic",
                       "the traced graph keeps the short-sequence rotary frequencies for every length")


@dataclass(frozen=True)
class Experts:
    """A sparse mixture-of-experts block in place of each layer's MLP, for the graph builder: softmax over the
    router's logits, the top k experts' weights (renormalised to sum 1 where `renormalize` says), each expert a gated
    MLP (activation(gate) * up -> down), their outputs summed by those weights; plus, where `shared` names one, a
    shared expert times sigmoid(shared_gate(x)) (qwen2_moe)."""

    router: str  # the router's Linear under each layer ("block_sparse_moe.gate")
    expert: tuple[str, str, str]  # expert {xid}'s gate, up and down projections under each layer
    renormalize: Callable[[dict], bool]
    count: Callable[[dict], int]  # routed experts per layer
    top_k: Callable[[dict], int] = lambda cfg: cfg["num_experts_per_tok"]
    shared: tuple[str, str, str] | None = None  # the shared expert's gate, up and down projections under each layer
    shared_gate: str | None = None  # the Linear(hidden, 1) whose sigmoid scales the shared expert
    every_layer: Callable[[dict], bool] = lambda cfg: True  # False: some layers keep a dense MLP (refused)


@dataclass(frozen=True)
class Decoder:
    """How a family's decoder computes differently from llama's, for the graph builder (convert/onnx/graph.py): each
    value comes from the normalised config (None: that step is left out), so that a family is a row, not a branch."""

    embedding_scale: Callable[[dict], float | None] = lambda cfg: None  # embeddings times it
    residual_scale: Callable[[dict], float | None] = lambda cfg: None  # each block's branch times it, before the add
    attention_scale: Callable[[dict], float] = lambda cfg: cfg["head_dim"] ** -0.5  # query . key times it
    attention_softcap: Callable[[dict], float | None] = lambda cfg: None  # scores as tanh(s / cap) * cap
    logit_divisor: Callable[[dict], float | None] = lambda cfg: None  # logits divided by it
    logit_softcap: Callable[[dict], float | None] = lambda cfg: None  # logits as tanh(l / cap) * cap
    activation: Callable[[dict], str] = lambda cfg: cfg.get("hidden_act", "silu")  # the MLP's, by HF name
    # the attention's input projections under self_attn. (the same name thrice: one fused q, k, v projection, phi3's)
    qkv: tuple[str, str, str] = ("q_proj", "k_proj", "v_proj")
    # the fused projection's rows as n_kv groups of (n_head / n_kv queries, one key, one value), falcon's
    # query_key_value; False: all queries, then all keys, then all values (phi3's qkv_proj)
    qkv_grouped: bool = False
    # the MLP's projections under mlp.: gate (None: not gated, activation(up)), up, down (gate == up: one fused
    # projection, gate half first, phi3's gate_up_proj)
    mlp: tuple[str | None, str, str] = ("gate_proj", "up_proj", "down_proj")
    norm_offset: float = 0.0  # RMS norms applied as (offset + w), in float32 (gemma's)
    layer_norm: bool = False  # the block and final norms are LayerNorms with a bias (starcoder2), not RMS norms
    norm_eps: Callable[[dict], float] = lambda cfg: cfg["rms_norm_eps"]
    # the norm before attention, after it (on its output, before the residual add), before and after the MLP
    block_norms: tuple[str | None, ...] = ("input_layernorm", None, "post_attention_layernorm", None)
    # the block norms when the config picks them (falcon's one input_layernorm or 40B's ln_attn and ln_mlp): the
    # normalised config -> block_norms' four; None means block_norms
    block_norms_for: Callable[[dict], tuple[str | None, ...]] | None = None
    # attention and the MLP side by side on the block's input, x + (mlp(norm_mlp(x)) + attn(norm_attn(x))), as
    # falcon's parallel block sums them; the MLP reads the attention norm's output where block_norms' third is None
    parallel: bool = False
    # each layer's "sliding_attention" or "full_attention" where config.json says no `layer_types` (None: the config's
    # sliding_window applies as sliding_window_everywhere says)
    layer_types: Callable[[dict], list[str] | None] = lambda cfg: None
    # the rope base of the sliding-window layers, which rotate with default rope (gemma3's rope_local_base_freq); None:
    # every layer rotates as the config's rope says
    local_rope_theta: Callable[[dict], float | None] = lambda cfg: None
    # where the tensors are: the embedding, the layers, the attention module and its output projection, the final norm
    embed: str = "model.embed_tokens"
    layers: str = "model.layers"
    attention: tuple[str, str] = ("self_attn", "o_proj")
    final_norm: str = "model.norm"
    positions: str | None = None  # a learned position embedding added to the tokens' (gpt2's wpe); None: rope
    conv1d: bool = False  # projection weights stored [in, out] (GPT-2's Conv1D), not nn.Linear's [out, in]
    mlp_module: str = "mlp"  # the MLP's module under each layer (mpt's ffn)
    alibi_bias_max: Callable[[dict], float | None] = lambda cfg: None  # ALiBi instead of rope (mpt's), its bias max
    clip_qkv: Callable[[dict], float | None] = lambda cfg: None  # q, k, v projections clamped to [-clip, clip]
    experts: Experts | None = None  # a sparse mixture of experts in place of every layer's MLP (mixtral, qwen MoE)

    def norms(self, cfg: dict) -> tuple[str | None, ...]:
        """The block norms of a model of the normalised config `cfg`: before and after attention and the MLP."""
        return self.block_norms_for(cfg) if self.block_norms_for else self.block_norms


@dataclass(frozen=True)
class Encoder:
    """A BERT-style encoder for the encoder builder (convert/onnx/encoder.py): where its tensors are and what it
    computes, read from the normalised config, so that another encoder family is a row, not a branch."""

    embeddings: str = "embeddings"  # word_, position_ and token_type_embeddings, then LayerNorm, under it
    layers: str = "encoder.layer"  # each layer's attention.self.{query,key,value}, attention.output, intermediate, output
    norm_eps: Callable[[dict], float] = lambda cfg: cfg["layer_norm_eps"]
    activation: Callable[[dict], str] = lambda cfg: cfg.get("hidden_act", "gelu")  # the FFN's, by HF name


@dataclass(frozen=True)
class OnnxSupport:
    """What the ONNX codec knows of a family (convert/onnx/): who builds its graph and what reads it back."""

    builder: bool = False  # modelport's graph builder (convert/onnx/graph.py, encoder.py) builds it
    genai_type: str | None = None  # onnxruntime-genai's model type, for genai_config.json (builder families)
    read_back: bool = False  # convert/onnx/reader.py's graph walk gives exported graphs their HF names back
    # an onnxruntime-genai builder folder's config.json is rebuilt whole from genai_config.json and the graph
    # (convert/onnx/genai_config.py): what the builder keeps only in graph constants (granite's multipliers, gemma2's
    # soft-caps and query scale) is read back through the family's Decoder row
    genai_config: bool = False
    # optimum-onnx exports it, except for these configurations (checked by tests/test_family_onnx.py); None: optimum
    # does not export the family (not in its TasksManager)
    optimum: tuple[Limit, ...] | None = None
    sliding_window_everywhere: bool = False  # the config's one sliding_window applies to every layer (mistral)
    # the config key that turns the window on for the layers layer_types marks local (qwen2's use_sliding_window)
    window_switch: str | None = None
    decoder: Decoder = Decoder()  # what the graph builder computes (builder families)
    encoder: Encoder | None = None  # an encoder: the builder makes convert/onnx/encoder.py's graph, not a decoder's


@dataclass(frozen=True)
class Arch:
    name: str  # HF model_type, the family's name here
    hf_class: str  # config.json "architectures"[0]
    gguf_arch: MODEL_ARCH
    hparams: tuple[HParam, ...]
    tensors: tuple[str, ...]  # HF tensor names; "{bid}" stands for the block number
    normalize: Callable[[dict], dict]  # fill the config's implied defaults (head_dim, kv heads, rope theta ...)
    to_gguf: dict[MODEL_TENSOR, Transform] = field(default_factory=dict)
    from_gguf: dict[MODEL_TENSOR, Transform] = field(default_factory=dict)
    extra_tensors: Callable[[dict], dict[str, np.ndarray]] = lambda cfg: {}  # GGUF-only tensors made from config
    # GGUF-only keys ("{arch}" templates) made from the normalised config (phi3's LongRoPE attention factor), not read
    # back: the source config GGUFs carry (CONFIG_KEY) says it on the way back
    extra_kv: Callable[[dict], list[tuple[str, Any, GGUFValueType]]] = lambda cfg: []
    derived: tuple[str, ...] = ()  # names extra_tensors may make: skipped on the way back, whatever the config
    hf_defaults: dict[str, Any] = field(default_factory=dict)  # fixed config.json fields for GGUF -> HF
    also_hf_types: tuple[str, ...] = ()  # other model_type values this module reads
    # config keys transformers 5 saves under another name than the hub's checkpoints: hub name -> transformers 5's
    t5_names: dict[str, str] = field(default_factory=dict)
    # an HF tensor name as `tensors` spells it, or None for one llama.cpp's converter leaves out (its filter_tensors:
    # BERT's "bert." prefix and pooler); GGUF -> HF gives the canonical names
    canonical: Callable[[str], str | None] = lambda name: name
    # mixture of experts: the HF name gguf-py knows for a layer's stacked 3-D tensor -> the template of the per-expert
    # 2-D tensors ("{xid}": expert number) it stacks, in expert order; the expert count is the EXPERT_COUNT hparam
    experts: dict[str, str] = field(default_factory=dict)
    # the HF names when they depend on the config (Falcon 7B's input_layernorm vs 40B's ln_attn/ln_mlp, both of which
    # gguf-py maps to attn_norm): normalised config -> templates; None means `tensors` always
    tensors_for: Callable[[dict], tuple[str, ...]] | None = None
    # config.json fields GGUF keys do not say, for a config rebuilt from them (a GGUF made by llama.cpp's converter):
    # (fields rebuilt so far, GGUF key values, GGUF tensors) -> fields, e.g. what llama.cpp assumes where no key speaks
    # (gemma2's query scale), what only tensors hold (phi3's LongRoPE factors) or tell (Falcon's LayerNorms per block)
    hf_from_gguf: Callable[[dict, dict, dict], dict] = lambda cfg, kv, tensors: {}
    # llama.cpp's llama-style rope rotates Q/K pairs interleaved (GPT-J) where transformers rotates halves (NeoX): a
    # family whose llama.cpp converter permutes Q/K rows (LlamaModel.permute) opts in; none inherits it
    qk_permute: bool = False
    onnx: OnnxSupport = OnnxSupport()  # the ONNX section; a family without one has no ONNX path
    # the mlx-lm model module that runs it (mlx_lm/models/<module>.py; its MODEL_REMAPPING runs mistral as llama);
    # None: mlx-lm has no module modelport's MLX names fit
    mlx: str | None = None

    @property
    def gguf_transforms(self) -> dict[MODEL_TENSOR, Transform]:
        """Per-tensor-kind transforms on the way to GGUF: the Q/K permutation if opted into, then the family's."""
        return {**(QK_PERMUTATION if self.qk_permute else {}), **self.to_gguf}

    @property
    def hf_transforms(self) -> dict[MODEL_TENSOR, Transform]:
        """The inverses, on the way back from GGUF."""
        return {**(QK_UNPERMUTATION if self.qk_permute else {}), **self.from_gguf}

    @property
    def gguf_name(self) -> str:
        return MODEL_ARCH_NAMES[self.gguf_arch]

    def name_map(self, n_blocks: int, config: dict | None = None) -> dict[str, tuple[MODEL_TENSOR, str]]:
        """HF name -> (tensor kind, GGUF name) for every tensor a model of `n_blocks` blocks (and this normalised
        `config`, for families with `tensors_for`) may have."""
        tmap = TensorNameMap(self.gguf_arch, n_blocks)
        out = {}
        tensors = self.tensors_for(config) if self.tensors_for and config is not None else self.tensors
        for template in tensors + tuple(self.experts):
            for bid in range(n_blocks) if "{bid}" in template else [None]:
                hf = template.format(bid=bid)
                found = tmap.get_type_and_name(hf, try_suffixes=(".weight", ".bias"))
                if found is None:
                    raise KeyError(f"gguf-py has no name for {hf} in {self.gguf_name}")
                out[hf] = found
        return out

    def n_experts(self, config: dict) -> int:
        """The routed experts per layer (0 without), from whichever config key the hparam table maps to it."""
        cfg = self.normalize(config)
        return next((cfg.get(h.hf) or 0 for h in self.hparams if h.gguf == Keys.LLM.EXPERT_COUNT), 0)

    def gguf_kv(self, config: dict) -> list[tuple[str, Any, GGUFValueType]]:
        cfg = self.normalize(config)
        rows = [(h.gguf, _lookup(cfg, h.hf), h.vtype) for h in self.hparams] + self.extra_kv(cfg)
        return [(k.format(arch=self.gguf_name), v, t) for k, v, t in rows if v is not None]

    def hf_config(self, kv: dict[str, Any]) -> dict:
        """config.json from GGUF keys: the inverse of the hparam table plus the family's fixed fields."""
        cfg = {"architectures": [self.hf_class], "model_type": self.name, **self.hf_defaults}
        for h in self.hparams:
            key = h.gguf.format(arch=self.gguf_name)
            if key in kv:
                *outer, last = h.hf.split(".")
                inner = cfg
                for part in outer:  # copied on the way down: hf_defaults' nested dicts stay untouched
                    inner[part] = inner = dict(inner.get(part) or {})
                inner[last] = kv[key]
        return cfg


def _lookup(cfg: dict, path: str) -> Any:
    """cfg[path], or None, following a dotted path into nested dicts."""
    for part in path.split("."):
        cfg = cfg.get(part) if isinstance(cfg, dict) else None
    return cfg


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """NeoX (halves) -> GPT-J (pairs) row order of a Q or K projection, as convert_hf_to_gguf.py's permute."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _heads(cfg: dict, kind: MODEL_TENSOR) -> int:
    return cfg["num_attention_heads"] if kind == MODEL_TENSOR.ATTN_Q else cfg.get("num_key_value_heads") or \
        cfg["num_attention_heads"]


QK_PERMUTATION = {k: (lambda w, cfg, k=k: permute(w, _heads(cfg, k))) for k in (MODEL_TENSOR.ATTN_Q, MODEL_TENSOR.ATTN_K)}
QK_UNPERMUTATION = {k: (lambda w, cfg, k=k: unpermute(w, _heads(cfg, k)))
                    for k in (MODEL_TENSOR.ATTN_Q, MODEL_TENSOR.ATTN_K)}


# transformers 5 keeps a model's rope in `rope_parameters`, one entry per layer type where they differ (gemma3)
LAYER_ROPES = {"full_attention": "rope_theta", "sliding_attention": "rope_local_base_freq"}
HUB_ROPE_KEYS = ("rope_theta", "partial_rotary_factor")  # taken out of rope_parameters to the top level
# and per rope type: Phi-3's LongRoPE configs keep the switch length beside max_position_embeddings (llama3's keep
# theirs in rope_scaling)
HUB_TOP_BY_TYPE = {"longrope": ("original_max_position_embeddings",)}
T5_ONLY = ("rope_parameters", "ignore_keys_at_rope_validation")


def hub_layout(config: dict, t5_names: dict[str, str] | None = None) -> dict:
    """A config as the hub's checkpoints lay it out (rope_theta, rope_scaling, rope_local_base_freq at the top; a
    family's keys by their hub names), which llama.cpp's converter, mlx-lm and transformers 4 read, from what
    transformers 5 saves. transformers 5 reads both layouts; rope_parameters wins where a config holds both, as there."""
    params = config.get("rope_parameters")
    cfg = {k: v for k, v in config.items() if k not in T5_ONLY}
    for hub, renamed in (t5_names or {}).items():
        if renamed in cfg:
            value = cfg.pop(renamed)
            cfg.setdefault(hub, value)
    if not isinstance(params, dict):
        return cfg
    if params.keys() & LAYER_ROPES.keys():
        for layer_type, key in LAYER_ROPES.items():
            if "rope_theta" in (params.get(layer_type) or {}):
                cfg[key] = params[layer_type]["rope_theta"]
        params = params.get("full_attention") or {}
    params = dict(params)
    for key in HUB_ROPE_KEYS + HUB_TOP_BY_TYPE.get(params.get("rope_type", params.get("type")), ()):
        if key in params:
            cfg[key] = params.pop(key)
    cfg["rope_scaling"] = params if params.get("rope_type", params.get("type", "default")) != "default" else None
    return cfg


def rope(config: dict) -> dict:
    """Rope settings (rope_theta and the rope_scaling entries, `rope_type` named so) of a config in either layout."""
    cfg = hub_layout(config)
    params = dict(cfg.get("rope_scaling") or {})
    if "type" in params and "rope_type" not in params:
        params["rope_type"] = params["type"]
    params.setdefault("rope_theta", cfg.get("rope_theta", 10000.0))
    if "partial_rotary_factor" in cfg:
        params.setdefault("partial_rotary_factor", cfg["partial_rotary_factor"])
    return params
