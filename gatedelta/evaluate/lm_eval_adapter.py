"""lm-evaluation-harness adapter: ``--model gatedelta`` (optional extra ``gatedelta[lmeval]``).

lm-eval has no plugin entry point for models, so the class registers itself when this module is
imported. Two ways to use it::

    # command line: this module runs lm-eval's own CLI after registering the model
    python -m gatedelta.evaluate.lm_eval_adapter --model gatedelta \\
        --model_args pretrained=runs/lm,max_length=2048 --tasks lambada_openai

    # Python
    import lm_eval, gatedelta.evaluate.lm_eval_adapter  # noqa: F401 (registers "gatedelta")
    lm_eval.simple_evaluate(model="gatedelta", model_args="pretrained=runs/lm", tasks=[...])

Implements the three request types: ``loglikelihood`` (sum of log-probabilities of a continuation
and whether greedy decoding would produce it), ``loglikelihood_rolling`` (log-likelihood of a whole
text, scored in disjoint windows of ``max_length`` tokens, the first token conditioned on BOS) and
``generate_until`` (greedy generation cut at the first stop string).
"""

from __future__ import annotations

import sys
from typing import Any

import torch
import torch.nn.functional as F
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tqdm.auto import tqdm


@register_model("gatedelta")
class GatedDeltaLM(LM):
    """A gatedelta checkpoint behind lm-eval's ``LM`` interface.

    Args (``--model_args key=value,...``):
        pretrained: run or checkpoint directory (as for ``gatedelta eval``).
        device: ``"cpu"``, ``"cuda"``, ... (default: cuda when available).
        max_length: longest token window scored at once (default 2048).
        max_gen_toks: default generation budget when a task gives none (default 256).
    """

    def __init__(self, pretrained: str, device: str | None = None, max_length: int | str = 2048,
                 max_gen_toks: int | str = 256, batch_size: Any = None, **_: Any) -> None:
        super().__init__()
        from gatedelta.evaluate.cli import load_checkpoint

        model, tokenizer = load_checkpoint(pretrained)
        if tokenizer is None:  # checkpoints without a saved tokenizer are byte-level
            from gatedelta.data.tokenizer import ByteTokenizer

            tokenizer = ByteTokenizer()
        self.device_ = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device_).eval()
        self.tok = tokenizer
        self.max_length = int(max_length)
        self.max_gen_toks = int(max_gen_toks)
        bos = getattr(tokenizer, "bos_id", None)
        if bos is None:
            bos = getattr(tokenizer, "eos_id", None)
        self.prefix_id = int(bos) if bos is not None else 0

    # -- helpers ----------------------------------------------------------------------------------
    def _encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text))

    @torch.no_grad()
    def _logprobs(self, inputs: list[int], targets: list[int]) -> tuple[float, bool]:
        """Sum of ``log p(targets[i] | inputs[:i+1])`` over one window, and whether all are argmax."""
        x = torch.tensor([inputs], device=self.device_)
        logits = self.model(input_ids=x).logits[0].float()               # (T, V)
        logp = F.log_softmax(logits, dim=-1)
        y = torch.tensor(targets, device=self.device_)
        picked = logp[torch.arange(len(targets), device=self.device_), y]
        return float(picked.sum()), bool((logp.argmax(-1) == y).all())

    def _score(self, context: list[int], continuation: list[int]) -> tuple[float, bool]:
        """Log-likelihood of ``continuation`` after ``context``, left-truncated to ``max_length``."""
        full = ([self.prefix_id] + context + continuation)[-(self.max_length + 1):]
        n = len(continuation)
        inputs, targets = full[:-1], full[1:]
        logits_start = len(inputs) - n
        x = torch.tensor([inputs], device=self.device_)
        with torch.no_grad():
            logp = F.log_softmax(self.model(input_ids=x).logits[0, logits_start:].float(), dim=-1)  # (n, V)
        y = torch.tensor(targets[logits_start:], device=self.device_)
        picked = logp[torch.arange(n, device=self.device_), y]
        return float(picked.sum()), bool((logp.argmax(-1) == y).all())

    # -- lm-eval's request types ------------------------------------------------------------------
    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        out = []
        for req in tqdm(requests, disable=disable_tqdm, desc="loglikelihood"):
            context, continuation = req.args
            # Score the continuation's own tokens: encode the whole string and split at the
            # context's length, so a tokenizer that merges across the boundary stays consistent.
            whole, ctx = self._encode(context + continuation), self._encode(context)
            if whole[:len(ctx)] != ctx:
                ctx = whole[:len(ctx)]
            out.append(self._score(ctx, whole[len(ctx):]))
        return out

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        out = []
        for req in tqdm(requests, disable=disable_tqdm, desc="loglikelihood_rolling"):
            (text,) = req.args
            tokens = self._encode(text)
            inputs = [self.prefix_id] + tokens[:-1]
            total = 0.0
            for i in range(0, len(tokens), self.max_length):   # disjoint windows
                total += self._logprobs(inputs[i:i + self.max_length], tokens[i:i + self.max_length])[0]
            out.append(total)
        return out

    @torch.no_grad()
    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        out = []
        for req in tqdm(requests, disable=disable_tqdm, desc="generate_until"):
            context, gen_kwargs = req.args
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            budget = int(gen_kwargs.get("max_gen_toks", self.max_gen_toks))
            ids = ([self.prefix_id] + self._encode(context))[-(self.max_length - budget):]
            x = torch.tensor([ids], device=self.device_)
            y = self.model.generate(x, max_new_tokens=budget, do_sample=False)
            text = self.tok.decode(y[0, x.shape[1]:].tolist())
            for stop in until:
                if stop and stop in text:
                    text = text[: text.index(stop)]
            out.append(text)
        return out


def main(argv: list[str] | None = None) -> int:
    """lm-eval's CLI with ``--model gatedelta`` available."""
    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["lm_eval", *(sys.argv[1:] if argv is None else argv)]
    cli_evaluate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
