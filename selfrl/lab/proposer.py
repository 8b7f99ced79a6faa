"""The LLM proposer of `selfrl evolve`: a recipe change asked of any OpenAI-compatible chat-completions endpoint.

DGM (arXiv 2505.22954, methods.md §7) lets a strong model read a parent's evaluation logs and propose the next
self-modification. Here the model sees the parent's recipe, its scores and metrics and the tail of its failure log,
and answers with one JSON object:

    {"set": {"learning_rate": 8e-05, "iqr_filter": true},        # fields of the search's space, in range
     "patch": [{"find": "...", "replace": "..."}],               # optional: edits to the editable file
     "why": "one sentence"}                                      # optional

The answer is untrusted text: it is parsed with json.loads (never evaluated), every key and value is checked
against the schema and the declared ranges, and anything else is a RecipeError: the proposal is rejected and
logged in the archive, and the search goes on. The HTTP call uses the standard library (urllib), so the proposer
adds no dependency; the endpoint is the user's (vLLM, llama.cpp, an API), given by `proposer_url`.
"""
from __future__ import annotations

import json
import re
import urllib.error
import urllib.request

from selfrl.lab.recipe import Range, RecipeError, check_change, check_edits

ANSWER_KEYS = ("set", "patch", "why")
_FENCE = re.compile(r"^```(?:json)?\s*\n(.*)\n```\s*$", re.DOTALL)  # one fenced block, as chat models often answer
MAX_ANSWER_CHARS = 20000  # a recipe change is a few hundred characters; a longer answer is not one
MAX_LOG_CHARS = 2000  # tail of the failure log sent to the model


def endpoint(url: str) -> str:
    """'http://host:8000/v1' -> 'http://host:8000/v1/chat/completions' (a full endpoint URL stays as it is)."""
    url = url.rstrip("/")
    return url if url.endswith("/chat/completions") else f"{url}/chat/completions"


def messages(parent: dict, base: dict, space: dict[str, Range], editable: str | None, log_tail: str) -> list[dict]:
    """The chat: the schema and ranges (system), then the parent's recipe, scores and failure log (user)."""
    fields = "\n".join(f"  {n}: {r.describe()}" for n, r in space.items())
    patch = ("\nYou may also edit the file shown below with \"patch\": a list of {\"find\": exact text that occurs "
             "once, \"replace\": new text}." if editable is not None else "")
    system = ("You improve a label-free self-training recipe for a language model. The score is the final "
              "validation accuracy of a run trained with the recipe. Propose one change to the parent recipe.\n"
              "Answer with one JSON object and nothing else: {\"set\": {field: value, ...}, \"why\": \"...\"}.\n"
              f"Fields you may set, and their allowed values:\n{fields}{patch}")
    recipe = {n: parent["recipe"].get(n, base.get(n)) for n in space}
    user = {"recipe": recipe, "scores": parent.get("scores"), "status": parent.get("status"),
            "metrics": parent.get("metrics", {})}
    text = f"Parent recipe and results:\n{json.dumps(user, indent=1)}"
    if log_tail:
        text += f"\n\nEnd of the log of its last failed child:\n{log_tail[-MAX_LOG_CHARS:]}"
    if editable is not None:
        text += f"\n\nThe editable file as the parent has it:\n{editable}"
    return [{"role": "system", "content": system}, {"role": "user", "content": text}]


def ask(url: str, model: str, chat: list[dict], timeout_s: float, api_key: str | None = None) -> str:
    """The content of the first choice of a chat-completions reply; RecipeError for any transport or shape error."""
    body = json.dumps({"model": model, "messages": chat, "temperature": 0.7}).encode()
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(endpoint(url), data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            reply = json.loads(response.read(1_000_000))
    except urllib.error.HTTPError as e:
        raise RecipeError(f"proposer endpoint answered HTTP {e.code}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        raise RecipeError(f"proposer endpoint unreachable: {getattr(e, 'reason', e)}") from None
    except ValueError:
        raise RecipeError("proposer endpoint answered with a body that is not JSON") from None
    try:
        content = reply["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise RecipeError("proposer reply has no choices[0].message.content") from None
    if not isinstance(content, str):
        raise RecipeError(f"proposer reply content is {type(content).__name__}, not text")
    return content


def parse_answer(content: str, space: dict[str, Range], parent_recipe: dict, editable: bool) -> tuple[dict, list, str]:
    """(change, edits, why) from the model's text, or RecipeError naming what is wrong with it."""
    if len(content) > MAX_ANSWER_CHARS:
        raise RecipeError(f"answer is {len(content)} characters long; expected one JSON object")
    text = content.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    try:
        answer = json.loads(text)
    except ValueError:
        raise RecipeError(f"answer is not JSON: {content[:120]!r}") from None
    if not isinstance(answer, dict):
        raise RecipeError(f"answer must be a JSON object, got {type(answer).__name__}")
    unknown = sorted(set(answer) - set(ANSWER_KEYS))
    if unknown:
        raise RecipeError(f"answer has unknown key {unknown[0]!r} (allowed: {', '.join(ANSWER_KEYS)})")
    why = answer.get("why", "")
    if not isinstance(why, str):
        raise RecipeError("'why' must be a string")
    edits = []
    if "patch" in answer:
        if not editable:
            raise RecipeError("'patch' given, but this search declares no editable file")
        edits = check_edits(answer["patch"])
    if "set" in answer or not edits:
        change = check_change(answer.get("set"), space, parent_recipe)
    else:
        change = {}
    return change, edits, why[:500]

