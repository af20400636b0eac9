// An MCP client built on the official TypeScript SDK, as an agent's host would run one: it
// starts `farebox mcp` over stdio, lists its tools, makes the tool calls it is given in order
// and prints one JSON line with everything the server answered (crates/farebox/tests/mcp.rs
// asserts on it).
//
// usage: node client.mjs PLAN.json
//   PLAN = { "command": "...", "args": [...], "calls": [{ "name": "fetch", "arguments": {...} }] }
import { readFileSync } from "node:fs";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";

const plan = JSON.parse(readFileSync(process.argv[2], "utf8"));
const transport = new StdioClientTransport({
  command: plan.command,
  args: plan.args,
  // The server's log (stderr) goes to ours, where the test shows it on failure.
  stderr: "inherit",
});
const client = new Client({ name: "farebox-mcp-test", version: "1.0.0" });
await client.connect(transport);

const tools = (await client.listTools()).tools.map((t) => ({
  name: t.name,
  description: t.description,
  inputSchema: t.inputSchema,
}));
const results = [];
for (const call of plan.calls) {
  const result = await client.callTool({ name: call.name, arguments: call.arguments ?? {} });
  results.push({
    name: call.name,
    isError: result.isError ?? false,
    structured: result.structuredContent ?? null,
    text: result.content?.filter((c) => c.type === "text").map((c) => c.text) ?? [],
  });
}
console.log(
  JSON.stringify({
    server: client.getServerVersion(),
    capabilities: client.getServerCapabilities(),
    instructions: client.getInstructions() ?? null,
    tools,
    results,
  }),
);
await client.close();
