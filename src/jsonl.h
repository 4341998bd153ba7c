/* jsonl.h - the JSONL batch mode (--jsonl), for scripts.
 *
 * Input, one JSON object per line (blank lines are skipped):
 *   {"role":"system","content":"..."}      only before the first user line (or after a reset)
 *   {"role":"user","content":"text"}
 *   {"role":"user","content":[{"type":"text","text":"..."},
 *                             {"type":"image","image":"path.png"},
 *                             {"type":"image_url","image_url":{"url":"data:image/png;base64,..."}}]}
 *   {"role":"assistant","content":"..."}   replaces the reply to the user line before it
 *                                          (history: how a /save file replays)
 *   {"reset":true}                          new conversation (system prompt back to -s)
 * Each user line gives one output line:
 *   {"content", "reasoning" (thinking models), "token_ids", "finish_reason",
 *    "usage": {"prompt_tokens", "completion_tokens", "image_tokens"},
 *    "timings": {"image_ms", "prefill_ms", "prefill_tok_s", "decode_tok_s"},
 *    "logprobs": [{"id", "logprob", "top": [{"id", "logprob"}...]}] (--logprobs N)}
 * A line that cannot be used gives {"error": "...", "line": K} and the run
 * goes on; the exit status is then 1. */
#ifndef QVL_JSONL_H
#define QVL_JSONL_H

#include <stdio.h>
#include "options.h"

int jsonl_run(const qvl_options *o, const qvl_source *model, FILE *in, FILE *out);

#endif
