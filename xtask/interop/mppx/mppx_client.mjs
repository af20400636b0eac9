// MPP client (mppx 0.11, the reference TypeScript SDK, `evm` charge) paying a farebox server.
// usage: node mppx_client.mjs <url> <rpc> <payer key> <token>
// Prints one JSON line: {status, body, receipt} (receipt decoded from Payment-Receipt).
// Exits 1 on any error.
import { Mppx, evm } from "mppx/client";
import { createPublicClient, http } from "viem";
import { privateKeyToAccount } from "viem/accounts";

const [url, rpc, key, token] = process.argv.slice(2);
if (!token) {
  console.error("usage: node mppx_client.mjs <url> <rpc> <payer key> <token>");
  process.exit(2);
}
const chainId = await createPublicClient({ transport: http(rpc) }).getChainId();
const account = privateKeyToAccount(key);
const mppx = Mppx.create({
  polyfill: false,
  methods: [
    evm.charge({
      account,
      // FareboxUSD's EIP-712 domain; the local token is no known asset, so it is named here.
      authorization: { name: "USDC", version: "2" },
      networks: [chainId],
      currencies: [token],
    }),
  ],
});
const response = await mppx.fetch(url, { signal: AbortSignal.timeout(60_000) });
const body = await response.text();
const header = response.headers.get("Payment-Receipt");
const receipt = header ? JSON.parse(Buffer.from(header, "base64url").toString("utf8")) : null;
console.log(JSON.stringify({ status: response.status, body, receipt }));
