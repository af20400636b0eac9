// MPP resource server (mppx 0.11, `evm` charge) that settles through farebox's x402 facilitator.
// usage: node mppx_server.mjs <port> <rpc> <facilitator url> <token> <recipient> <amount>
// Serves GET /paid for `amount` (display units, 6 decimals) of the token, EIP-712 domain
// {name: "USDC", version: "2"}. Prints "listening" once it accepts requests.
import http from "node:http";
import { Mppx, evm } from "mppx/server";
import { createPublicClient, http as viemHttp } from "viem";

const [port, rpc, facilitator, token, recipient, amount] = process.argv.slice(2);
if (!amount) {
  console.error("usage: node mppx_server.mjs <port> <rpc> <facilitator url> <token> <recipient> <amount>");
  process.exit(2);
}
const chainId = await createPublicClient({ transport: viemHttp(rpc) }).getChainId();
const mppx = Mppx.create({
  realm: "mppx.interop",
  secretKey: "an-mppx-interop-secret-of-at-least-32-bytes",
  methods: [
    evm.charge({
      currency: token,
      recipient,
      chainId,
      decimals: 6,
      authorization: { name: "USDC", version: "2" },
      x402: { facilitator },
    }),
  ],
});
const paid = Mppx.toNodeListener(mppx.charge({ amount, description: "mppx interop" }));
http
  .createServer(async (req, res) => {
    try {
      const result = await paid(req, res);
      if (result.status === 402) return;
      res.setHeader("content-type", "text/plain");
      res.end("paid content from mppx");
    } catch (e) {
      console.error(e);
      res.statusCode = 500;
      res.end(String(e));
    }
  })
  .listen(Number(port), "127.0.0.1", () => console.log("listening"));
