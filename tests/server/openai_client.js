// The official OpenAI Node client (npm "openai") against recurd's
// /v1/completions and /v1/models. Prints one JSON object with what it saw.
// Usage: RECURD_URL=http://127.0.0.1:PORT [RECURD_EOS_URL=...] node openai_client.js
//   RECURD_EOS_URL: a server whose tokenizer has an end-of-text token (the
//   empty prompt generates there; on RECURD_URL's byte-level model it is a 400)
const OpenAI = require("openai");

function client(url, key) {
  return new OpenAI({
    baseURL: url + "/v1",
    apiKey: key || process.env.RECURD_API_KEY || "unused",
    maxRetries: 0,
    timeout: 60000,
  });
}

// What the SDK raised: its class (one of OpenAI's APIError subclasses), the
// HTTP status and the error object's fields.
async function caught(fn) {
  try {
    await fn();
    return null;
  } catch (e) {
    const classes = ["BadRequestError", "AuthenticationError", "NotFoundError",
                     "UnprocessableEntityError", "RateLimitError", "InternalServerError",
                     "APIError"];
    return {
      class: classes.find((c) => e instanceof OpenAI[c]) || e.constructor.name,
      status: e.status,
      type: e.type === undefined ? null : e.type,
      code: e.code === undefined ? null : e.code,
      message: e.message,
    };
  }
}

async function main() {
  const c = client(process.env.RECURD_URL);
  const out = {};
  const models = await c.models.list();
  out.models = models.data.map((m) => m.id);
  const model = out.models[0];
  const m = await c.models.retrieve(model);
  out.retrieve = { id: m.id, object: m.object };
  out.retrieve_missing = await caught(() => c.models.retrieve("no-such-model"));

  const cpl = await c.completions.create({
    model, prompt: "Once upon a time", max_tokens: 8, temperature: 0, logprobs: 2, echo: true,
    seed: 1,
  });
  out.completion = {
    object: cpl.object,
    text: cpl.choices[0].text,
    finish_reason: cpl.choices[0].finish_reason,
    logprobs: cpl.choices[0].logprobs,
    usage: cpl.usage,
    system_fingerprint: cpl.system_fingerprint,
  };

  const stream = await c.completions.create({
    model, prompt: "Once upon a time", max_tokens: 8, temperature: 0, stream: true,
  });
  let text = "";
  let chunks = 0;
  let finish = null;
  for await (const chunk of stream) {
    chunks++;
    text += chunk.choices[0].text;
    if (chunk.choices[0].finish_reason) finish = chunk.choices[0].finish_reason;
  }
  out.stream = { text, chunks, finish_reason: finish };

  // n > 1, plain and streamed (chunks grouped by choices[].index)
  const many = { model, prompt: "Once upon a time", max_tokens: 6, temperature: 1, seed: 7, n: 2 };
  const n2 = await c.completions.create(many);
  out.n = {
    choices: n2.choices.map((x) => ({ index: x.index, text: x.text, finish_reason: x.finish_reason })),
    usage: n2.usage,
  };
  const n2s = await c.completions.create({ ...many, stream: true,
                                            stream_options: { include_usage: true } });
  const byIndex = {};
  let usage = null;
  for await (const chunk of n2s) {
    for (const x of chunk.choices) byIndex[x.index] = (byIndex[x.index] || "") + x.text;
    if (chunk.usage) usage = chunk.usage;
  }
  out.n_stream = { texts: byIndex, usage };

  // the empty prompt
  out.empty_byte_model = await caught(() =>
    c.completions.create({ model, prompt: "", max_tokens: 4 }));
  if (process.env.RECURD_EOS_URL) {
    const e = client(process.env.RECURD_EOS_URL);
    const em = (await e.models.list()).data[0].id;
    const r = await e.completions.create({ model: em, prompt: "", max_tokens: 4, temperature: 0 });
    const ref = await e.completions.create({ model: em, prompt: [0], max_tokens: 4,
                                             temperature: 0 });
    out.empty = { text: r.choices[0].text, ref: ref.choices[0].text, usage: r.usage };
  }

  // errors: the SDK's class and status
  out.error = await caught(() => c.completions.create({ model: "m", prompt: "x", max_tokens: 0 }));
  out.error_n = await caught(() =>
    c.completions.create({ model, prompt: "x", max_tokens: 1, n: 2, best_of: 3 }));
  if (process.env.RECURD_AUTH_URL)
    out.error_auth = await caught(() => client(process.env.RECURD_AUTH_URL, "wrong-key").models.list());
  console.log(JSON.stringify(out));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
