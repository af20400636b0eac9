// x402 v1 resource server (x402-express 1.2.0 on express 5) whose facilitator is farebox's.
// usage: node v1_express_server.mjs <port> <facilitator url> <token> <payTo> [amount]
// Serves GET /paid for `amount` base units (default 10000) of the token (6 decimals, EIP-712
// domain {name: "USDC", version: "2"}) on `base-sepolia` (chain id 84532). Prints "listening".
import express from "express";
import { paymentMiddleware } from "x402-express";

const [port, facilitatorUrl, token, payTo, amount = "10000"] = process.argv.slice(2);
if (!payTo) {
  console.error("usage: node v1_express_server.mjs <port> <facilitator url> <token> <payTo> [amount]");
  process.exit(2);
}
const routes = {
  "GET /paid": {
    price: { amount, asset: { address: token, decimals: 6, eip712: { name: "USDC", version: "2" } } },
    network: "base-sepolia",
    config: { description: "farebox interop (v1)", mimeType: "text/plain", maxTimeoutSeconds: 60 },
  },
};
const app = express();
app.use(paymentMiddleware(payTo, routes, { url: facilitatorUrl }));
app.get("/paid", (_req, res) => res.type("text/plain").send("paid content from x402-express"));
app.listen(Number(port), "127.0.0.1", () => console.log("listening"));
