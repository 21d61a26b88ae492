// Drives a running Hale with ollama-js, as a user's program would.
//
// Usage: node ollama_client.mjs BASE_URL API_KEY MODEL
//
// Prints one JSON object with what the library returned, for tests/tests/client_apis.rs to
// assert on; an unexpected exception exits non-zero, which fails that test.
import { Ollama } from "ollama";

const [baseUrl, apiKey, model] = process.argv.slice(2);
const client = new Ollama({ host: baseUrl, headers: { Authorization: `Bearer ${apiKey}` } });
const messages = [{ role: "user", content: "hi" }];
const out = {};
out.version = (await client.version()).version;
const show = await client.show({ model });
out.show = { family: show.details.family, modelfile: show.modelfile };
out.ps = (await client.ps()).models.map((m) => m.model).sort();
out.embeddings = (await client.embeddings({ model, prompt: "hello" })).embedding.length;
out.list = (await client.list()).models.map((m) => m.model).sort();
out.chat = (await client.chat({ model, messages })).message.content;
let streamed = "";
for await (const part of await client.chat({ model, messages, stream: true })) {
  streamed += part.message.content;
}
out.chat_stream = streamed;
out.generate = (await client.generate({ model, prompt: "hi" })).response;
out.embed = (await client.embed({ model, input: ["a", "b"] })).embeddings.length;
try {
  await client.chat({ model: "no-such-model", messages });
  out.not_found = "no error";
} catch (e) {
  out.not_found = { name: e.name, status: e.status_code, message: e.message, shown: String(e) };
}
console.log(JSON.stringify(out));
