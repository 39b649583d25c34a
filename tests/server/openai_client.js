// The official OpenAI Node client (npm "openai") against recurd's
// /v1/completions and /v1/models. Prints one JSON object with what it saw.
// Usage: RECURD_URL=http://127.0.0.1:PORT node openai_client.js
const OpenAI = require("openai");

async function main() {
  const client = new OpenAI({
    baseURL: process.env.RECURD_URL + "/v1",
    apiKey: process.env.RECURD_API_KEY || "unused",
    maxRetries: 0,
    timeout: 60000,
  });
  const out = {};
  const models = await client.models.list();
  out.models = models.data.map((m) => m.id);
  const c = await client.completions.create({
    model: out.models[0],
    prompt: "Once upon a time",
    max_tokens: 8,
    temperature: 0,
    logprobs: 2,
    echo: true,
    seed: 1,
  });
  out.completion = {
    object: c.object,
    text: c.choices[0].text,
    finish_reason: c.choices[0].finish_reason,
    logprobs: c.choices[0].logprobs,
    usage: c.usage,
  };
  const stream = await client.completions.create({
    model: out.models[0],
    prompt: "Once upon a time",
    max_tokens: 8,
    temperature: 0,
    stream: true,
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
  try {
    await client.completions.create({ model: "m", prompt: "x", max_tokens: 0 });
    out.error = null;
  } catch (e) {
    out.error = { status: e.status, type: e.error && e.error.type };
  }
  console.log(JSON.stringify(out));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
