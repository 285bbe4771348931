#!/usr/bin/env bash
# bench/gpu_check.sh: the GPU paths of training, checked in one go on the CUDA GPUs of this machine (<= 8 minutes).
#
#     bash bench/gpu_check.sh [STEPS]        (default 20 steps a run; PY=... picks the Python, default .venv/bin/python)
#
# With the embedded SmolLM2-135M and examples/demo.yaml's data, it runs and prints as one table:
#   lora+merge    LoRA with merge_lora; the merged folder loads with plain from_pretrained on the GPU and gives the
#                 logits of base + adapter
#   full          full finetuning
#   qlora         QLoRA (4-bit base; skipped without bitsandbytes)
#   fsdp-full     training.distributed=fsdp on every GPU (needs 2 or more; one process never shards)
#   fsdp-lora     the same for LoRA
#   packed        packed rows give the unpacked loss on CUDA (fp32, the CUDA attention path)
#   trl-full/lora tokens/s of TRL SFTTrainer with the same model, examples, batch, lr, steps and bf16, beside
#                 tunesmith's own tokens/s from the full and lora runs
# Each check has its own time limit, and the later ones are skipped once 7.5 minutes are spent. Exit status: 2
# without a CUDA device, 1 when a check failed, else 0.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
STEPS=${1:-20}
DEADLINE_S=450

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check: no CUDA device here (torch.cuda.is_available() is false); run it on a machine with a GPU" >&2
    exit 2
fi
GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())")
WORK=$(mktemp -d /tmp/gpu-check-XXXXXX)
export TUNESMITH_HOME=${TUNESMITH_HOME:-$WORK/home} TOKENIZERS_PARALLELISM=false
RESULTS=$WORK/results.tsv
: > "$RESULTS"
FAILED=0
echo "gpu_check: $GPUS GPU(s): $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -1); work in $WORK"

record() {  # check status seconds tokens_per_s detail
    printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" >> "$RESULTS"
    [ "$2" = FAIL ] && FAILED=1
    return 0
}

time_left() { [ "$SECONDS" -lt "$DEADLINE_S" ]; }

summary_field() {  # run field -> the value in train_summary.json
    "$PY" -c "import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$WORK/runs/$1/train_summary.json" "$2" \
        2>/dev/null || echo "-"
}

train() {  # name limit_s [tunesmith train options...]
    local name=$1 limit=$2; shift 2
    if ! time_left; then record "$name" skipped - - "out of time"; return 1; fi
    local start=$SECONDS
    if timeout "$limit" "$PY" -m tunesmith train examples/demo.yaml --set "training.max_steps=$STEPS" \
        --set training.eval_every_steps=null --set "output.runs_dir=$WORK/runs" --set "output.name=$name" "$@" \
        > "$WORK/$name.log" 2>&1; then
        record "$name" ok $((SECONDS - start)) "$(summary_field "$name" tokens_per_s)" \
            "test loss $(summary_field "$name" final_test_loss), $(summary_field "$name" processes) process(es)"
        return 0
    fi
    record "$name" FAIL $((SECONDS - start)) - "see $WORK/$name.log: $(tail -1 "$WORK/$name.log" | cut -c1-80)"
    return 1
}

python_check() {  # name limit_s script args...
    local name=$1 limit=$2 script=$3; shift 3
    if ! time_left; then record "$name" skipped - - "out of time"; return; fi
    local start=$SECONDS out
    if out=$(timeout "$limit" "$PY" -c "$script" "$@" 2> "$WORK/$name.log"); then
        record "$name" ok $((SECONDS - start)) "$(echo "$out" | cut -f1)" "$(echo "$out" | cut -f2)"
    else
        record "$name" FAIL $((SECONDS - start)) - "${out:-see $WORK/$name.log: $(tail -1 "$WORK/$name.log" | cut -c1-80)}"
    fi
}

# the embedded model is converted once, before anything is timed
timeout 120 "$PY" -c "from tunesmith.models import resolve_model_path; resolve_model_path('smollm2-135m-instruct')" \
    > "$WORK/convert.log" 2>&1 || { echo "gpu_check: converting the embedded model failed ($WORK/convert.log)"; exit 1; }

MERGE_CHECK='
import sys, torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
from tunesmith.models import resolve_model_path
run = sys.argv[1]
merged = AutoModelForCausalLM.from_pretrained(run + "/model-merged", dtype=torch.float32).cuda().eval()
base = AutoModelForCausalLM.from_pretrained(resolve_model_path("smollm2-135m-instruct"), dtype=torch.float32)
adapted = PeftModel.from_pretrained(base, run + "/model").cuda().eval()
ids = AutoTokenizer.from_pretrained(run + "/model")("Is the Crow lamp dimmable?", return_tensors="pt").input_ids.cuda()
with torch.no_grad():
    a, b = merged(ids).logits, adapted(ids).logits
gap = float((a - b).abs().max())
text = merged.generate(ids, max_new_tokens=8, do_sample=False)
assert gap < 1e-3, f"merged logits differ from base + adapter by {gap}"
print(f"-\tmerged loads on cuda, max logit gap {gap:.1e}, generates {text.shape[1] - ids.shape[1]} tokens")
'

PACKED_CHECK='
import sys, torch
from tunesmith.config import ModelConfig
from tunesmith.modeling.batches import make_batch
from tunesmith.modeling.losses import CausalLMLoss
from tunesmith.models import load_model, load_tokenizer
from tunesmith.prepare.pipeline import load_prepared
from tunesmith.runs import RunPaths
train_set, _, manifest = load_prepared(RunPaths(sys.argv[1]))
examples = [{"input_ids": train_set["input_ids"][i], "labels": train_set["labels"][i]} for i in range(16)]
model = load_model(ModelConfig(), dtype=torch.float32).cuda().eval()
loss = CausalLMLoss(model)
pad = load_tokenizer(ModelConfig()).pad_token_id
width = max(manifest.max_length, 512)
with torch.no_grad():
    packed = sum(float(loss(**{k: v.cuda() for k, v in make_batch(examples[i:i + 8], True, width, pad).items()}))
                 for i in (0, 8))
    padded = sum(float(loss(**{k: v.cuda() for k, v in make_batch(examples[i:i + 8], False, width, pad).items()}))
                 for i in (0, 8))
gap = abs(packed - padded) / abs(padded)
assert gap < 1e-4, f"packed loss sum {packed} vs unpacked {padded}: relative gap {gap:.1e}"
print(f"-\tloss sum packed {packed:.4f} = unpacked {padded:.4f} (relative gap {gap:.1e})")
'

TRL_RUN='
import sys, time, torch
from datasets import Dataset
from peft import LoraConfig
from trl import SFTConfig, SFTTrainer
from tunesmith.config import load_config
from tunesmith.models import load_model, load_tokenizer
from tunesmith.prepare.pipeline import load_prepared
from tunesmith.runs import RunPaths
run, method, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
config = load_config("examples/demo.yaml", [f"training.method={method}"])
t = config.training
train_set, _, manifest = load_prepared(RunPaths(run))
data = Dataset.from_dict({"input_ids": list(train_set["input_ids"]),
                          "completion_mask": [[int(l != -100) for l in labels] for labels in train_set["labels"]]})
lr = t.learning_rate or (2e-5 if method == "full" else 2e-4)
args = SFTConfig(output_dir=run + "-trl", max_steps=steps, per_device_train_batch_size=t.batch_size,
                 gradient_accumulation_steps=t.gradient_accumulation_steps, learning_rate=lr, bf16=True,
                 logging_steps=1, save_strategy="no", eval_strategy="no", report_to=[], max_length=manifest.max_length,
                 completion_only_loss=True, dataloader_num_workers=0, disable_tqdm=True, gradient_checkpointing=False,
                 packing=t.packing)
peft = LoraConfig(r=t.lora_r, lora_alpha=t.lora_alpha, lora_dropout=t.lora_dropout, target_modules="all-linear",
                  task_type="CAUSAL_LM") if method == "lora" else None
trainer = SFTTrainer(model=load_model(config.model, dtype=torch.float32), args=args, train_dataset=data,
                     processing_class=load_tokenizer(config.model), peft_config=peft)
tokens = 0
collate = trainer.data_collator
def counting(batch):
    global tokens
    out = collate(batch)
    tokens += int(out["attention_mask"].sum()) if "attention_mask" in out else sum(len(b["input_ids"]) for b in batch)
    return out
trainer.data_collator = counting
torch.cuda.synchronize(); start = time.perf_counter()
trainer.train()
torch.cuda.synchronize()
print(f"{tokens / (time.perf_counter() - start):.0f}\tTRL SFTTrainer, bf16, batch {t.batch_size}, {steps} steps")
'

train lora+merge 90 --set training.method=lora --set training.merge_lora=true \
    && python_check lora-merged 60 "$MERGE_CHECK" "$WORK/runs/lora+merge"
train full 90 --set training.method=full
if "$PY" -c "import bitsandbytes" 2>/dev/null; then
    train qlora 90 --set training.method=qlora
else
    record qlora skipped - - "bitsandbytes is not installed (pip install bitsandbytes)"
fi
if grep -q "distributed:" src/tunesmith/config/schema.py && [ "$GPUS" -ge 2 ]; then
    train fsdp-full 100 --nproc "$GPUS" --set training.method=full --set training.distributed=fsdp
    train fsdp-lora 100 --nproc "$GPUS" --set training.method=lora --set training.distributed=fsdp
else
    record fsdp skipped - - "needs training.distributed and 2 or more GPUs (this machine has $GPUS)"
fi
if [ -f "$WORK/runs/full/train_summary.json" ]; then
    python_check packed 60 "$PACKED_CHECK" "$WORK/runs/full"
    python_check trl-full 75 "$TRL_RUN" "$WORK/runs/full" full "$STEPS"
fi
if [ -f "$WORK/runs/lora+merge/train_summary.json" ]; then
    python_check trl-lora 75 "$TRL_RUN" "$WORK/runs/lora+merge" lora "$STEPS"
fi

echo
printf '%-12s %-8s %6s %10s  %s\n' check status s tokens/s detail
while IFS=$'\t' read -r check status seconds rate detail; do
    printf '%-12s %-8s %6s %10s  %s\n' "$check" "$status" "$seconds" "$rate" "$detail"
done < "$RESULTS"
echo "($SECONDS s in all; logs in $WORK)"
exit $FAILED
