#!/usr/bin/env python3
"""The model of MODEL.md (../shared/MODEL.md, docs/MODEL.md) in PyTorch, written for speed as a strong
PyTorch user would, to time engram against: one training step (forward, backward, clipping, fused
AdamW + SparseAdam, balancing-bias update) on random tokens, as benchmarks/step_time does.

    python3 benchmarks/pytorch_reference.py --config configs/h100-bench.pbtxt [--compile] [--steps 10] [--warmup 3]
        prints one JSON line: tokens_per_s, median_step_ms, peak_memory_bytes, mode, ...
    python3 benchmarks/pytorch_reference.py --config CONFIG --print-config    (no torch needed)
    python3 benchmarks/pytorch_reference.py --self-check                       (hashing checks; torch optional)

The config is read with a small strict reader of protobuf text format whose schema (names, types,
defaults) is read from runtime/config/engram.proto, so no protobuf package is needed.

Speed choices (not part of the model): float32 master weights under bf16 autocast; attention by
F.scaled_dot_product_attention(is_causal=True); RoPE cos/sin computed once per step; routed experts on
token rows sorted by expert through torch grouped_mm (a loop over experts where it is missing), with
gather/permute functions whose backward is a gather (no atomics); Engram tables as
nn.Embedding(sparse=True) stepped by SparseAdam; fused AdamW; optional torch.compile of each block and
of the output head (the sparse table lookup stays eager).

Where this deviates from MODEL.md (none of it changes the work per step):
- Initialization is plain torch normal_ with the MODEL.md standard deviations, not the counter-based
  generator (timing does not depend on the values).
- wq/wk/wv, w1/w3 (dense, shared and routed experts) and Engram wk/wv are stored concatenated so each
  pair or triple is one matmul; the function is the same.
- bf16 numerics: matmuls, SDPA and the weighted sum of the top-k expert outputs run in bf16 with float32
  accumulation (engram's BF16 mode rounds matmul operands to bf16 too); the router logits, scores,
  norms, gate score, losses and optimizer run in float32.
- Top-k ties are broken by torch.topk, not "lower expert index wins" (ties have probability ~0 here).
- The compression table is the identity (V' = V) and data paths are unused, as in step_time; the
  compress[x] gather is still done so the hashing costs the same (same lookups: B*T*(N-1)*K rows).
- One process: parallel.expert_parallel is ignored.
"""
import argparse
import json
import math
import re
import statistics
import sys
import time
from pathlib import Path

try:
    import torch
    import torch.nn.functional as F
    from torch import nn
except ModuleNotFoundError:  # --help, --print-config and the pure-Python self-checks need no torch
    torch = F = nn = None

REPO = Path(__file__).resolve().parent.parent
PROTO = REPO / "runtime" / "config" / "engram.proto"

# ----------------------------------------------------------------------------------------------------
# The schema: a strict reader of the proto2 subset engram.proto uses (messages of optional/repeated
# scalar, enum and message fields with [default = ...], top-level enums).


class ConfigError(Exception):
    pass


def read_schema(path=PROTO):
    """Returns (messages, enums): messages[name][field] = (type, repeated, default or None);
    enums[name] = {value name: number} in declaration order."""
    text = re.sub(r"//[^\n]*", "", Path(path).read_text())
    tokens = re.findall(r'"[^"]*"|[A-Za-z_][\w.]*|-?[\d.][\w.+-]*|[{}=;\[\]]', text)
    messages, enums, i = {}, {}, 0

    def expect(value):
        nonlocal i
        if i >= len(tokens) or tokens[i] != value:
            raise ConfigError(f"{path}: expected '{value}' near token {i} ({tokens[i:i + 5]})")
        i += 1

    while i < len(tokens):
        kind = tokens[i]
        if kind in ("syntax", "package"):
            i = tokens.index(";", i) + 1
        elif kind == "enum":
            name, i = tokens[i + 1], i + 2
            expect("{")
            values = enums[name] = {}
            while tokens[i] != "}":
                values[tokens[i]] = int(tokens[i + 2])
                i += 3
                expect(";")
            i += 1
        elif kind == "message":
            name, i = tokens[i + 1], i + 2
            expect("{")
            fields = messages[name] = {}
            while tokens[i] != "}":
                label, ftype, fname = tokens[i:i + 3]
                if label not in ("optional", "repeated"):
                    raise ConfigError(f"{path}: message {name}: unsupported label '{label}'")
                i += 3
                expect("=")
                i += 1  # field number
                default = None
                if tokens[i] == "[":
                    i += 1
                    expect("default")
                    expect("=")
                    default, i = tokens[i], i + 1
                    expect("]")
                expect(";")
                fields[fname] = (ftype, label == "repeated", default)
            i += 1
        else:
            raise ConfigError(f"{path}: unsupported top-level token '{kind}'")
    return messages, enums


# ----------------------------------------------------------------------------------------------------
# Protobuf text format, strictly: unknown fields, a repeated value for a non-repeated field, a
# non-repeated field set twice, and values of the wrong type are errors naming the line.

TEXT_TOKEN = re.compile(r"""
    (?P<space>\s+|\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<number>-?(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?[fF]?|inf|infinity|nan)(?![\w.]))
  | (?P<ident>[A-Za-z_]\w*)
  | (?P<symbol>[{}\[\]:,;<>])
""", re.VERBOSE | re.IGNORECASE)
INT_LITERAL = re.compile(r"-?(?:0[xX][0-9a-fA-F]+|\d+)")
INT_RANGES = {"int32": (-2**31, 2**31 - 1), "int64": (-2**63, 2**63 - 1), "uint64": (0, 2**64 - 1)}
END = "<end of input>"
STRING_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'"}


class Message(dict):
    """A parsed message: fields that were set, and their schema defaults through attribute access
    (proto2: an unset sub-message reads as an empty one, an unset field without a default as None)."""

    def __init__(self, schema, type_name, values=()):
        super().__init__(values)
        self._schema, self._type = schema, type_name

    def __getattr__(self, name):
        messages, enums = self._schema
        fields = messages[self._type]
        if name not in fields:
            raise AttributeError(f"{self._type} has no field '{name}'")
        if name in self:
            return self[name]
        ftype, repeated, default = fields[name]
        if repeated:
            return []
        if ftype in messages:
            return Message(self._schema, ftype)
        return None if default is None else convert_scalar(self._schema, ftype, default, f"default of {name}")

    def require(self, name, path):
        value = getattr(self, name)
        if value is None:
            raise ConfigError(f"{path}.{name} is required but not set")
        return value

    def to_json(self):
        out = {}
        for name in self._schema[0][self._type]:
            value = getattr(self, name)
            if isinstance(value, Message):
                value = value.to_json()
            elif isinstance(value, list):
                value = [v.to_json() if isinstance(v, Message) else v for v in value]
            out[name] = value
        return out


def convert_scalar(schema, ftype, token, where):
    messages, enums = schema
    kind, text = token if isinstance(token, tuple) else (None, token)
    if ftype in INT_RANGES:
        if not INT_LITERAL.fullmatch(text):
            raise ConfigError(f"{where}: '{text}' is not an integer ({ftype})")
        digits = text.lstrip("-")
        value = int(text, 16 if digits[:2] in ("0x", "0X") else 8 if len(digits) > 1 and digits[0] == "0" else 10)
        lo, hi = INT_RANGES[ftype]
        if not lo <= value <= hi:
            raise ConfigError(f"{where}: {value} is out of range for {ftype}")
        return value
    if ftype in ("float", "double"):
        if kind not in (None, "number"):
            raise ConfigError(f"{where}: '{text}' is not a number ({ftype})")
        try:
            return float(text[:-1] if text[-1] in "fF" and not text.lower().endswith("inf") else text)
        except ValueError:
            raise ConfigError(f"{where}: '{text}' is not a number ({ftype})") from None
    if ftype == "bool":
        if text in ("true", "True", "t", "1"):
            return True
        if text in ("false", "False", "f", "0"):
            return False
        raise ConfigError(f"{where}: '{text}' is not a bool")
    if ftype == "string":
        if kind not in (None, "string"):
            raise ConfigError(f"{where}: {text} is not a quoted string")
        body = text[1:-1] if kind == "string" else text.strip('"')
        return re.sub(r"\\(.)", lambda m: unescape(m.group(1), where), body)
    if ftype in enums:
        values = enums[ftype]
        if text in values:
            return text
        if INT_LITERAL.fullmatch(text) and int(text) in values.values():
            return next(k for k, v in values.items() if v == int(text))
        raise ConfigError(f"{where}: '{text}' is not a value of enum {ftype} ({', '.join(values)})")
    raise ConfigError(f"{where}: unsupported field type {ftype}")


def unescape(char, where):
    if char not in STRING_ESCAPES:
        raise ConfigError(f"{where}: unsupported string escape \\{char}")
    return STRING_ESCAPES[char]


def tokenize_text(text, source):
    tokens, pos, line = [], 0, 1
    while pos < len(text):
        m = TEXT_TOKEN.match(text, pos)
        if not m:
            raise ConfigError(f"{source}:{line}: unexpected character {text[pos]!r}")
        if m.lastgroup != "space":
            tokens.append((m.lastgroup, m.group(), line))
        line += m.group().count("\n")
        pos = m.end()
    return tokens


def parse_text(text, type_name="ExperimentConfig", source="<text>", schema=None):
    schema = schema or read_schema()
    messages = schema[0]
    tokens = tokenize_text(text, source)
    pos = 0

    def peek():
        return tokens[pos] if pos < len(tokens) else ("end", END, tokens[-1][2] if tokens else 1)

    def take(*allowed):
        nonlocal pos
        tok = peek()
        if tok[1] not in allowed:
            raise ConfigError(f"{source}:{tok[2]}: expected {' or '.join(allowed)}, got '{tok[1]}'")
        pos += 1
        return tok

    def parse_body(type_name, closing):
        nonlocal pos
        msg = Message(schema, type_name)
        fields = messages[type_name]
        while peek()[1] != closing:
            kind, name, line = peek()
            if kind != "ident":
                raise ConfigError(f"{source}:{line}: expected a field name of {type_name}, got '{name}'")
            if name not in fields:
                raise ConfigError(f"{source}:{line}: {type_name} has no field named '{name}'")
            pos += 1
            ftype, repeated, _ = fields[name]
            where = f"{source}:{line}: {type_name}.{name}"
            is_message = ftype in messages
            if is_message:
                if peek()[1] == ":":
                    pos += 1
            else:
                take(":")
            if peek()[1] == "[":
                if not repeated:
                    raise ConfigError(f"{where} is not repeated; a [list] is not allowed")
                pos += 1
                values = []
                while peek()[1] != "]":
                    values.append(parse_value(ftype, is_message, where))
                    if peek()[1] != "]":
                        take(",")
                pos += 1
            else:
                values = [parse_value(ftype, is_message, where)]
            if repeated:
                msg.setdefault(name, []).extend(values)
            elif name in msg:
                raise ConfigError(f"{where} is not repeated but is set more than once")
            else:
                msg[name] = values[0]
            if peek()[1] in (",", ";"):
                pos += 1
        return msg

    def parse_value(ftype, is_message, where):
        nonlocal pos
        if is_message:
            closing = "}" if take("{", "<")[1] == "{" else ">"
            msg = parse_body(ftype, closing)
            take(closing)
            return msg
        kind, text, line = peek()
        if kind not in ("number", "ident", "string"):
            raise ConfigError(f"{where}: expected a value, got '{text}'")
        pos += 1
        if kind == "string":  # adjacent string literals concatenate
            while peek()[0] == "string":
                text = text[:-1] + peek()[1][1:]
                pos += 1
        return convert_scalar(schema, ftype, (kind, text), where)

    return parse_body(type_name, END)


def load_config(path):
    return parse_text(Path(path).read_text(), "ExperimentConfig", str(path))


# ----------------------------------------------------------------------------------------------------
# Engram hashing plan (MODEL.md §4.2), in exact integer arithmetic.

MASK64 = (1 << 64) - 1
SPLITMIX_GAMMA = 0x9E3779B97F4A7C15


def splitmix64(state):
    """One SplitMix64 step: returns (new state, output)."""
    state = (state + SPLITMIX_GAMMA) & MASK64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return state, z ^ (z >> 31)


def engram_multipliers(seed, layer, vocab_compressed, max_ngram):
    half_bound = max(1, ((1 << 63) - 1) // vocab_compressed // 2)
    state = (seed + 10007 * layer) & MASK64
    out = []
    for _ in range(max_ngram):
        state, u = splitmix64(state)
        out.append(2 * (u % half_bound) + 1)
    return out


def is_prime(n):
    """Miller-Rabin with the first 12 primes as bases: deterministic below 2^64."""
    if n < 2:
        return False
    bases = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)
    for p in bases:
        if n % p == 0:
            return n == p
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for a in bases:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def engram_primes(n_layers, max_ngram, heads, table_size):
    """primes[i][(n-2)*heads + j]: layers in config order, then n, then j; each the smallest unused
    prime above its start (S_n - 1 for j = 0, else the previous head's prime)."""
    used, primes = set(), []
    for _ in range(n_layers):
        layer = []
        for n in range(2, max_ngram + 1):
            start = table_size[n - 2] - 1
            for _ in range(heads):
                p = start + 1
                while p in used or not is_prime(p):
                    p += 1
                used.add(p)
                layer.append(p)
                start = p
        primes.append(layer)
    return primes


def hash_plans(model, vocab_compressed):
    """Per Engram layer: layer, multipliers, primes, offsets (exclusive prefix sums), rows."""
    g = model.engram
    primes = engram_primes(len(g.layers), g.max_ngram, g.heads_per_ngram, g.table_size)
    plans = []
    for layer, layer_primes in zip(g.layers, primes):
        offsets = [sum(layer_primes[:i]) for i in range(len(layer_primes))]
        plans.append({"layer": layer, "multipliers": engram_multipliers(g.seed, layer, vocab_compressed, g.max_ngram),
                      "primes": layer_primes, "offsets": offsets, "rows": sum(layer_primes)})
    return plans


def naive_rows(ids, pad, plan, max_ngram, heads):
    """rows[t][(n-2)*heads + j] of one sequence, straight from MODEL.md §4.2 (for the self-check)."""
    m, out = plan["multipliers"], []
    for t in range(len(ids)):
        row = []
        for n in range(2, max_ngram + 1):
            mix = 0
            for k in range(n):
                mix ^= ((ids[t - k] if t - k >= 0 else pad) * m[k]) & MASK64
            for j in range(heads):
                h = (n - 2) * heads + j
                row.append(plan["offsets"][h] + mix % plan["primes"][h])
        out.append(row)
    return out


def engram_pad_id(model):
    pad = model.engram.pad_id
    return model.eos_id if pad == -1 else pad


def validate(cfg):
    """The fields the model needs (engram's config loader checks the rest the same way)."""
    m = cfg.model
    for name in ("vocab_size", "d_model", "n_layers", "n_heads"):
        m.require(name, "model")
    if m.d_model % m.n_heads or (m.d_model // m.n_heads) % 2:
        raise ConfigError(f"model.d_model = {m.d_model} must split into n_heads = {m.n_heads} heads of even width")
    if m.n_dense_layers > 0:
        m.require("d_ff", "model")
    if m.n_dense_layers < m.n_layers:
        for name in ("n_routed_experts", "top_k", "expert_d_ff"):
            m.moe.require(name, "model.moe")
    g = m.engram
    if g.layers:
        g.require("head_dim", "model.engram")
        if len(g.table_size) != g.max_ngram - 1:
            raise ConfigError(f"model.engram.table_size has {len(g.table_size)} values, expected {g.max_ngram - 1}")
        if sorted(set(g.layers)) != list(g.layers) or not all(0 <= l < m.n_layers for l in g.layers):
            raise ConfigError(f"model.engram.layers = {g.layers} must be ascending layer indices")
    t = cfg.train
    micro = t.micro_batch_size or t.global_batch_size
    if t.global_batch_size % micro:
        raise ConfigError(f"train.global_batch_size = {t.global_batch_size} is not a multiple of "
                          f"train.micro_batch_size = {micro}")


# ----------------------------------------------------------------------------------------------------
# The model (MODEL.md §2-4). Modules derive from nn.Module only when torch is there.

Module = nn.Module if nn is not None else object
eager = torch.compiler.disable if torch is not None else (lambda f: f)


def rms_norm(x, weight, eps):
    return F.rms_norm(x, (x.shape[-1],), weight, eps)


def rope(x, cos, sin):
    """Rotate-half RoPE on [B, T, H, d_h] with cos/sin [T, 1, d_h/2]."""
    a, b = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((a * cos - b * sin, a * sin + b * cos), dim=-1)


def shift_right(ids, k, pad):
    """ids[:, t-k] with pad where t-k < 0."""
    if k == 0:
        return ids
    if k >= ids.shape[1]:
        return torch.full_like(ids, pad)
    return F.pad(ids[:, :-k], (k, 0), value=pad)


def ngram_rows(ids_c, pad_c, multipliers, primes, offsets):
    """MODEL.md §4.2: global table rows [B, T, (N-1)*K] of compressed ids [B, T] (int64). Every
    product x'*m_k is below 2^63 and so are the XORs, so int64 arithmetic is exact."""
    mix = ids_c * multipliers[0]
    rows = []
    for k in range(1, multipliers.shape[0]):
        mix = mix ^ (shift_right(ids_c, k, pad_c) * multipliers[k])
        rows.append(mix.unsqueeze(-1) % primes[k - 1] + offsets[k - 1])
    return torch.cat(rows, dim=-1)


@eager
def table_lookup(table, rows):
    """Sparse-gradient lookup; kept out of torch.compile graphs (sparse gradients)."""
    return table(rows)


class GatherAssignments(torch.autograd.Function if torch is not None else object):
    """x [N, D] -> rows [N*K, D] of the assignments in expert-sorted order (order: sorted assignment ->
    flat assignment t*K + k). Backward gathers by the inverse order and sums the K copies: no atomics."""

    @staticmethod
    def forward(ctx, x, order, inverse, k):
        ctx.save_for_backward(inverse)
        ctx.k = k
        return x[order // k]

    @staticmethod
    def backward(ctx, grad):
        (inverse,) = ctx.saved_tensors
        return grad[inverse].unflatten(0, (-1, ctx.k)).sum(1), None, None, None


class Permute(torch.autograd.Function if torch is not None else object):
    """x[index] for a permutation index; backward is grad[inverse]."""

    @staticmethod
    def forward(ctx, x, index, inverse):
        ctx.save_for_backward(inverse)
        return x[index]

    @staticmethod
    def backward(ctx, grad):
        (inverse,) = ctx.saved_tensors
        return grad[inverse], None, None


def grouped_mm_fn():
    if torch is None:
        return None
    return getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)


class SwiGLU(Module):
    def __init__(self, d, f, std, out_std):
        super().__init__()
        self.w13 = nn.Parameter(torch.empty(2 * f, d).normal_(0, std))  # rows: w1 then w3
        self.w2 = nn.Parameter(torch.empty(d, f).normal_(0, out_std))

    def forward(self, x):
        gate, up = F.linear(x, self.w13).chunk(2, dim=-1)
        return F.linear(F.silu(gate) * up, self.w2)


class Attention(Module):
    def __init__(self, cfg, out_std):
        super().__init__()
        d = cfg.d_model
        self.n_heads = cfg.n_heads
        self.wqkv = nn.Parameter(torch.empty(3 * d, d).normal_(0, cfg.init_std))  # rows: wq, wk, wv
        self.wo = nn.Parameter(torch.empty(d, d).normal_(0, out_std))

    def forward(self, x, cos, sin):
        b, t, d = x.shape
        q, k, v = F.linear(x, self.wqkv).view(b, t, 3, self.n_heads, d // self.n_heads).unbind(2)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        return F.linear(o.transpose(1, 2).reshape(b, t, d), self.wo)


class MoE(Module):
    def __init__(self, cfg, out_std, use_grouped_mm):
        super().__init__()
        moe, d = cfg.moe, cfg.d_model
        self.n_experts, self.top_k, self.d_ff = moe.n_routed_experts, moe.top_k, moe.expert_d_ff
        self.softmax = moe.score_func == "SOFTMAX"
        self.normalize, self.routed_scale = moe.normalize_topk, moe.routed_scale
        self.aux_coeff, self.z_coeff = moe.aux_loss_coeff, moe.z_loss_coeff
        self.router = nn.Parameter(torch.empty(self.n_experts, d).normal_(0, cfg.init_std))
        self.register_buffer("bias", torch.zeros(self.n_experts))  # balancing bias b: no gradient
        self.w13 = nn.Parameter(torch.empty(self.n_experts, 2 * self.d_ff, d).normal_(0, cfg.init_std))
        self.w2 = nn.Parameter(torch.empty(self.n_experts, d, self.d_ff).normal_(0, out_std))
        shared = moe.n_shared_experts * self.d_ff
        self.shared = SwiGLU(d, shared, cfg.init_std, out_std) if shared > 0 else None
        self.grouped_mm = grouped_mm_fn() if use_grouped_mm else None

    def experts(self, rows, load):
        """Routed experts on rows sorted by expert; load[e] rows per expert."""
        w13, w2 = self.w13.to(torch.bfloat16), self.w2.to(torch.bfloat16)
        if self.grouped_mm is not None:
            offs = load.cumsum(0).to(torch.int32)
            gate, up = self.grouped_mm(rows, w13.transpose(-2, -1), offs=offs).chunk(2, dim=-1)
            return self.grouped_mm(F.silu(gate) * up, w2.transpose(-2, -1), offs=offs)
        outs, start = [], 0
        for e, count in enumerate(load.tolist()):
            seg = rows[start:start + count]
            gate, up = F.linear(seg, w13[e]).chunk(2, dim=-1)
            outs.append(F.linear(F.silu(gate) * up, w2[e]))
            start += count
        return torch.cat(outs)

    def forward(self, x, per_token, per_micro_batch):
        """x [N, D] (normed). Returns y [N, D], the weighted aux + z loss terms, and the load [E]."""
        n, k, e = x.shape[0], self.top_k, self.n_experts
        with torch.autocast("cuda", enabled=False):
            logits = F.linear(x.float(), self.router)  # float32 (MODEL.md §3)
        scores = logits.softmax(-1) if self.softmax else logits.sigmoid()
        sel = torch.topk(scores.detach() + self.bias, k, dim=-1, sorted=False).indices
        w = scores.gather(-1, sel)
        if self.normalize:
            w = w / w.sum(-1, keepdim=True)
        if self.routed_scale != 1.0:
            w = w * self.routed_scale

        flat = sel.reshape(-1)
        load = torch.zeros(e, dtype=torch.int64, device=x.device).scatter_add_(0, flat, torch.ones_like(flat))
        order = torch.argsort(flat, stable=True)
        inverse = torch.empty_like(order).scatter_(0, order, torch.arange(n * k, device=x.device))
        rows = GatherAssignments.apply(x.to(torch.bfloat16), order, inverse, k)
        out = Permute.apply(self.experts(rows, load), inverse, order).view(n, k, -1)
        y = torch.bmm(w.to(out.dtype).unsqueeze(1), out).squeeze(1)
        if self.shared is not None:
            y = y + self.shared(x)

        extra = logits.new_zeros(())
        if self.aux_coeff > 0:  # α·E·Σ f_i P_i over this micro-batch, gradient through P only
            f = load.float() / (n * k)
            p = (scores / scores.sum(-1, keepdim=True)).mean(0)
            extra = extra + self.aux_coeff * e * (f * p).sum() * per_micro_batch
        if self.z_coeff > 0:
            extra = extra + self.z_coeff * torch.logsumexp(logits, -1).square().sum() * per_token
        return y, extra, load


class Engram(Module):
    def __init__(self, cfg, plan, pad_c):
        super().__init__()
        g, d = cfg.engram, cfg.d_model
        self.d, self.eps, self.dilation, self.pad_c = d, cfg.norm_eps, g.max_ngram, pad_c
        n_heads = (g.max_ngram - 1) * g.heads_per_ngram
        self.table = nn.Embedding(plan["rows"], g.head_dim, sparse=True)
        nn.init.normal_(self.table.weight, 0, g.table_init_std)
        self.wkv = nn.Linear(n_heads * g.head_dim, 2 * d)  # rows: W_K then W_V; biases b_K, b_V
        nn.init.normal_(self.wkv.weight, 0, cfg.init_std)
        nn.init.zeros_(self.wkv.bias)
        self.q_norm, self.k_norm, self.conv_norm = (nn.Parameter(torch.ones(d)) for _ in range(3))
        self.conv = nn.Parameter(torch.zeros(g.conv_kernel, d))  # W_c
        heads = g.heads_per_ngram
        self.register_buffer("multipliers", torch.tensor(plan["multipliers"], dtype=torch.int64))
        self.register_buffer("primes", torch.tensor(plan["primes"], dtype=torch.int64).view(-1, heads))
        self.register_buffer("offsets", torch.tensor(plan["offsets"], dtype=torch.int64).view(-1, heads))

    def forward(self, h, ids_c):
        rows = ngram_rows(ids_c, self.pad_c, self.multipliers, self.primes, self.offsets)
        e = table_lookup(self.table, rows).flatten(2)  # [B, T, d_mem], n then j ascending
        k, v = self.wkv(e).chunk(2, dim=-1)
        s = (rms_norm(h, self.q_norm, self.eps) * rms_norm(k.float(), self.k_norm, self.eps)).sum(-1)
        s = s / math.sqrt(self.d)
        mag = s.abs()
        mag = torch.where(mag > 1e-6, mag, 1e-6).sqrt()  # zero gradient where |s| <= 1e-6
        u = torch.sigmoid(torch.sign(s) * mag).unsqueeze(-1) * v
        r = rms_norm(u, self.conv_norm, 1e-5)
        # c_t = Σ_i W_c[i] ⊙ r_{t-(w-1-i)δ}, zero before the sequence start.
        w, t = self.conv.shape[0], u.shape[1]
        r_pad = F.pad(r, (0, 0, (w - 1) * self.dilation, 0))
        c = sum(self.conv[i] * r_pad[:, i * self.dilation:i * self.dilation + t] for i in range(w))
        return u + F.silu(c)


class Block(Module):
    def __init__(self, cfg, layer, plan, pad_c, use_grouped_mm):
        super().__init__()
        d, out_std = cfg.d_model, cfg.init_std / math.sqrt(2 * cfg.n_layers)
        self.eps = cfg.norm_eps
        self.engram = Engram(cfg, plan, pad_c) if plan is not None else None
        self.attn_norm, self.ffn_norm = nn.Parameter(torch.ones(d)), nn.Parameter(torch.ones(d))
        self.attn = Attention(cfg, out_std)
        self.is_moe = layer >= cfg.n_dense_layers
        self.ffn = MoE(cfg, out_std, use_grouped_mm) if self.is_moe else SwiGLU(d, cfg.d_ff, cfg.init_std, out_std)

    def forward(self, h, ids_c, cos, sin, per_token, per_micro_batch):
        if self.engram is not None:
            h = h + self.engram(h, ids_c)
        h = h + self.attn(rms_norm(h, self.attn_norm, self.eps), cos, sin)
        x = rms_norm(h, self.ffn_norm, self.eps)
        if not self.is_moe:
            return h + self.ffn(x), None, None
        y, extra, load = self.ffn(x.flatten(0, 1), per_token, per_micro_batch)
        return h + y.view_as(h), extra, load


class OutputHead(Module):
    """Final RMSNorm, logits and the summed cross-entropy (float32)."""

    def __init__(self, cfg):
        super().__init__()
        self.eps = cfg.norm_eps
        self.norm = nn.Parameter(torch.ones(cfg.d_model))
        tied = cfg.tie_embeddings
        self.output = None if tied else nn.Parameter(torch.empty(cfg.vocab_size, cfg.d_model).normal_(0, cfg.init_std))

    def forward(self, h, y, tok_embeddings):
        logits = F.linear(rms_norm(h, self.norm, self.eps), tok_embeddings if self.output is None else self.output)
        return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="sum")


class Transformer(Module):
    def __init__(self, cfg, use_grouped_mm=True):
        super().__init__()
        v, d = cfg.vocab_size, cfg.d_model
        self.tok_embeddings = nn.Parameter(torch.empty(v, d).normal_(0, cfg.init_std))
        self.head = OutputHead(cfg)
        # Identity compression (V' = V), still applied as a gather like the real one.
        self.register_buffer("compress", torch.arange(v, dtype=torch.int64))
        plans = {p["layer"]: p for p in hash_plans(cfg, v)}
        pad_c = engram_pad_id(cfg)
        self.layers = nn.ModuleList(Block(cfg, l, plans.get(l), pad_c, use_grouped_mm) for l in range(cfg.n_layers))
        d_h = d // cfg.n_heads
        self.register_buffer("rope_freq", cfg.rope_theta ** (-2 * torch.arange(d_h // 2, dtype=torch.float64) / d_h),
                             persistent=False)

    def forward(self, x, y, per_token, per_micro_batch):
        """Returns the weighted loss of this micro-batch and the expert loads [n_moe, E] (or None)."""
        angle = torch.outer(torch.arange(x.shape[1], dtype=torch.float64, device=x.device), self.rope_freq)
        cos, sin = angle.cos().float().unsqueeze(1), angle.sin().float().unsqueeze(1)  # once per step
        ids_c = self.compress[x]
        h = F.embedding(x, self.tok_embeddings)
        loss, loads = 0.0, []
        for block in self.layers:
            h, extra, load = block(h, ids_c, cos, sin, per_token, per_micro_batch)
            if load is not None:
                loss, loads = loss + extra, loads + [load]
        ce = self.head(h, y, self.tok_embeddings)
        return loss + ce * per_token, torch.stack(loads) if loads else None

    def compile_regions(self):
        """torch.compile per block and for the head, as torchtitan does: blocks of one kind share a
        compiled graph, so compiling is fast; the glue between them (embedding, RoPE tables) is tiny."""
        for block in self.layers:
            block.compile(dynamic=False)
        self.head.compile(dynamic=False)


# ----------------------------------------------------------------------------------------------------
# Training step (train/trainer.cpp): gradients of the global batch, global-norm clipping (tables
# included), AdamW + SparseAdam at the scheduled learning rate, then the balancing-bias update.

def learning_rate(optim, step, max_steps):
    if step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    progress = min(1.0, max(0.0, (step - optim.warmup_steps) / max(1, max_steps - optim.warmup_steps)))
    return optim.min_lr + 0.5 * (optim.lr - optim.min_lr) * (1 + math.cos(math.pi * progress))


class Trainer:
    def __init__(self, model, cfg, max_steps):
        self.model, self.cfg, self.max_steps, self.steps_done = model, cfg, max_steps, 0
        o = cfg.optim
        self.tables = [m.table.weight for m in model.modules() if isinstance(m, Engram)]
        table_ids = {id(p) for p in self.tables}
        named = [(n, p) for n, p in model.named_parameters() if id(p) not in table_ids]
        # Decay on 2-D/3-D weights, none on norm gains, biases and W_c (MODEL.md §6).
        decay = [p for n, p in named if p.dim() >= 2 and not n.endswith(".conv")]
        no_decay = [p for n, p in named if p.dim() < 2 or n.endswith(".conv")]
        self.dense = decay + no_decay
        self.adamw = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                                        {"params": no_decay, "weight_decay": 0.0}],
                                       lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, fused=True)
        self.sparse_adam = torch.optim.SparseAdam(self.tables, lr=o.lr * o.table_lr_mult, betas=(o.beta1, o.beta2),
                                                  eps=o.eps) if self.tables else None
        self.moe_layers = [m for m in model.modules() if isinstance(m, MoE)]

    def clip_gradients(self):
        for p in self.tables:
            if p.grad is not None:
                p.grad = p.grad.coalesce()  # duplicate rows summed once; SparseAdam reuses it
        max_norm = self.cfg.optim.grad_clip
        if max_norm <= 0:
            return
        grads = [p.grad for p in self.dense if p.grad is not None]
        sum_sq = torch.stack(torch._foreach_norm(grads)).square().sum()
        for p in self.tables:
            if p.grad is not None:
                sum_sq = sum_sq + p.grad.values().square().sum()
        scale = (max_norm / (sum_sq.sqrt() + 1e-6)).clamp(max=1.0)
        torch._foreach_mul_(grads, scale)
        for p in self.tables:
            if p.grad is not None:
                g = p.grad
                p.grad = torch.sparse_coo_tensor(g.indices(), g.values() * scale, g.shape, is_coalesced=True)

    def step(self, batches):
        targets = sum(y.numel() for _, y in batches)
        per_token, per_micro_batch = 1.0 / targets, 1.0 / len(batches)
        loads, loss_sum = None, 0.0
        for x, y in batches:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss, load = self.model(x, y, per_token, per_micro_batch)
            loss.backward()
            loss_sum = loss_sum + loss.detach()
            if load is not None:
                loads = load if loads is None else loads + load
        self.clip_gradients()
        lr = learning_rate(self.cfg.optim, self.steps_done, self.max_steps)
        for group in self.adamw.param_groups:
            group["lr"] = lr
        self.adamw.step()
        if self.sparse_adam is not None:
            self.sparse_adam.param_groups[0]["lr"] = lr * self.cfg.optim.table_lr_mult
            self.sparse_adam.step()
        rate = self.cfg.model.moe.bias_update_rate
        if loads is not None and rate > 0:
            with torch.no_grad():
                load_f = loads.float()
                delta = rate * torch.sign(load_f.mean(-1, keepdim=True) - load_f)
                for layer, d in zip(self.moe_layers, delta):
                    layer.bias.add_(d)
        self.model.zero_grad(set_to_none=True)
        self.steps_done += 1
        return float(loss_sum)  # a host read, as engram's trainer ends each step


def random_batches(cfg, device):
    t = cfg.train
    micro = t.micro_batch_size or t.global_batch_size
    gen = torch.Generator(device=device).manual_seed(0)
    v = cfg.model.vocab_size

    def tokens():
        return torch.randint(0, v, (micro, t.seq_len), device=device, generator=gen)

    return [(tokens(), tokens()) for _ in range(t.global_batch_size // micro)]


def benchmark(args):
    cfg = load_config(args.config)
    validate(cfg)
    if torch is None:
        sys.exit("pytorch_reference.py: torch is not installed (--print-config and --self-check work without it)")
    if not torch.cuda.is_available():
        sys.exit("pytorch_reference.py: needs a CUDA device")
    device = torch.device("cuda")
    use_grouped_mm = grouped_mm_fn() is not None and not args.expert_loop
    with device:  # parameters are created (and initialized) on the GPU
        model = Transformer(cfg.model, use_grouped_mm)
    if args.compile:
        model.compile_regions()
    trainer = Trainer(model, cfg, max_steps=args.warmup + args.steps)
    batches = random_batches(cfg, device)
    torch.cuda.reset_peak_memory_stats()
    for _ in range(args.warmup):
        loss = trainer.step(batches)
    times = []
    for _ in range(args.steps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        loss = trainer.step(batches)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    tokens = cfg.train.global_batch_size * cfg.train.seq_len
    print(json.dumps({
        "config": args.config, "mode": "compile" if args.compile else "eager",
        "experts": "grouped_mm" if use_grouped_mm else "loop",
        "device": torch.cuda.get_device_name(), "torch": torch.__version__,
        "tokens_per_step": tokens, "median_step_ms": median * 1e3, "tokens_per_s": tokens / median,
        "peak_memory_bytes": torch.cuda.max_memory_allocated(),
        "dense_params": sum(p.numel() for p in trainer.dense), "table_params": sum(p.numel() for p in trainer.tables),
        "steps": args.steps, "warmup": args.warmup, "final_loss": loss}))


# ----------------------------------------------------------------------------------------------------
# Checks of the pure-Python parts (and of the torch hashing against them when torch is there).

def self_check():
    state, first = splitmix64(0)
    assert first == 0xE220A8397B1DCDAF, hex(first)  # SplitMix64's published first output from state 0
    primes = engram_primes(2, 3, 8, [646400, 646400])  # MODEL.md §4.2 example
    assert primes[0][:8] == [646403, 646411, 646421, 646423, 646433, 646453, 646519, 646523], primes[0][:8]
    assert primes[0][8] == 646537, primes[0][8]
    assert len({p for layer in primes for p in layer}) == 32
    # Written by engram's C++ trainer into a checkpoint of configs/tiny.pbtxt (V' = 3400, seed 0).
    assert engram_multipliers(0, 1, 3400, 3) == [883747896632805, 2068513897309817, 181221348504133]
    assert engram_multipliers(0, 3, 3400, 3) == [343700182540173, 450799031152093, 30233640328873]
    assert engram_primes(2, 3, 4, [10000, 10000])[0] == [10007, 10009, 10037, 10039, 10061, 10067, 10069, 10079]
    assert all(is_prime(p) for p in (2, 2147483647, 1000000000039, (1 << 61) - 1))
    assert not any(is_prime(c) for c in (1, 561, 41041, 3215031751, 3825123056546413051))
    checked = ["splitmix64", "primes (MODEL.md example)", "multipliers and primes (C++ checkpoint)", "is_prime"]
    if torch is not None:
        import random
        rng = random.Random(0)
        for vocab, t_len, max_ngram, heads in ((1000, 13, 3, 3), (1 << 24, 5, 4, 2), (32000, 2, 3, 8), (50, 1, 2, 1)):
            plan = {"multipliers": engram_multipliers(7, 1, vocab, max_ngram),
                    "primes": engram_primes(1, max_ngram, heads, [97, 646400, 13][:max_ngram - 1])[0]}
            plan["offsets"] = [sum(plan["primes"][:i]) for i in range(len(plan["primes"]))]
            ids = [[rng.randrange(max(0, vocab - 50), vocab) for _ in range(t_len)] for _ in range(3)]
            pad = vocab - 8
            primes, offsets = (torch.tensor(plan[key]).view(-1, heads) for key in ("primes", "offsets"))
            got = ngram_rows(torch.tensor(ids), pad, torch.tensor(plan["multipliers"]), primes, offsets)
            want = [naive_rows(row, pad, plan, max_ngram, heads) for row in ids]
            assert got.tolist() == want, (vocab, t_len, max_ngram, heads)
        checked.append("torch ngram_rows vs the naive hash")
    print("self-check passed: " + ", ".join(checked))


def main():
    ap = argparse.ArgumentParser(
        description="PyTorch reference of the engram model: training-step time on random tokens")
    ap.add_argument("--config", help="experiment config (.pbtxt)")
    ap.add_argument("--compile", action="store_true", help="torch.compile each block and the head")
    ap.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--expert-loop", action="store_true", help="a loop over experts instead of grouped_mm")
    ap.add_argument("--print-config", action="store_true", help="print the parsed config and hash plan as JSON")
    ap.add_argument("--self-check", action="store_true", help="check the hashing (and the torch hash when present)")
    args = ap.parse_args()
    if args.self_check:
        return self_check()
    if not args.config:
        ap.error("--config is required")
    if args.steps < 1 or args.warmup < 0:
        ap.error("--steps must be >= 1 and --warmup >= 0")
    try:
        if args.print_config:
            cfg = load_config(args.config)
            validate(cfg)
            print(json.dumps({"config": cfg.to_json(), "engram_hashing": hash_plans(cfg.model, cfg.model.vocab_size),
                              "pad_id": engram_pad_id(cfg.model)}))
            return None
        return benchmark(args)
    except ConfigError as e:
        sys.exit(f"pytorch_reference.py: {e}")


if __name__ == "__main__":
    main()
