// x402 v2 resource server (@x402/express 2.27.0 on express 5) whose facilitator is farebox's.
// usage: node v2_express_server.mjs <port> <facilitator url> <token> <payTo> [amount]
// Serves GET /paid for `amount` base units (default 10000) of the token, EIP-712 domain
// {name: "USDC", version: "2"}, on eip155:84532. Prints "listening" once it accepts requests.
import express from "express";
import { paymentMiddleware, x402ResourceServer } from "@x402/express";
import { HTTPFacilitatorClient } from "@x402/core/server";
import { ExactEvmScheme } from "@x402/evm/exact/server";

const [port, facilitatorUrl, token, payTo, amount = "10000"] = process.argv.slice(2);
if (!payTo) {
  console.error("usage: node v2_express_server.mjs <port> <facilitator url> <token> <payTo> [amount]");
  process.exit(2);
}
const network = "eip155:84532";
const facilitator = new HTTPFacilitatorClient({ url: facilitatorUrl });
const server = new x402ResourceServer(facilitator).register(network, new ExactEvmScheme());
const routes = {
  "GET /paid": {
    // A chain with no default stablecoin: the price is an asset amount, `extra` the EIP-712 domain.
    accepts: {
      scheme: "exact",
      price: { amount, asset: token, extra: { name: "USDC", version: "2" } },
      network,
      payTo,
      maxTimeoutSeconds: 60,
    },
    description: "farebox interop (v2)",
    mimeType: "text/plain",
  },
};
const app = express();
app.use(paymentMiddleware(routes, server));
app.get("/paid", (_req, res) => res.type("text/plain").send("paid content from @x402/express"));
app.listen(Number(port), "127.0.0.1", () => console.log("listening"));
