// x402 v2 client (@x402/fetch 2.27.0) paying a farebox server.
// usage: node v2_fetch_client.mjs <url> <rpc> <payer key> <token> [<cap>]
// <cap>: the most one payment may be, in the token's base units (default: uncapped, as
// @x402/core leaves a listed asset without `maxAmountPerPayment`).
// Prints one JSON line: {status, body, paymentResponse} (paymentResponse decoded from
// PAYMENT-RESPONSE). Exits 1 on any error.
import { x402Client, wrapFetchWithPayment, decodePaymentResponseHeader } from "@x402/fetch";
import { ExactEvmScheme } from "@x402/evm/exact/client";
import { createPublicClient, http } from "viem";
import { privateKeyToAccount } from "viem/accounts";

const [url, rpc, key, token, cap] = process.argv.slice(2);
if (!token) {
  console.error("usage: node v2_fetch_client.mjs <url> <rpc> <payer key> <token> [<cap>]");
  process.exit(2);
}
const publicClient = createPublicClient({ transport: http(rpc) });
const network = `eip155:${await publicClient.getChainId()}`;
const account = privateKeyToAccount(key);
// The local token is not one of @x402/core's default assets, so the client's spend controls
// (default assets only, at most $1) must allow it explicitly.
const client = new x402Client()
  .register("eip155:*", new ExactEvmScheme(account, { rpcUrl: rpc }))
  .setSpendControls({
    allowedAssets: [{ network, asset: token, ...(cap ? { maxAmountPerPayment: cap } : {}) }],
  });
const paidFetch = wrapFetchWithPayment(fetch, client);
const response = await paidFetch(url, { signal: AbortSignal.timeout(60_000) });
const body = await response.text();
const header = response.headers.get("PAYMENT-RESPONSE");
const paymentResponse = header ? decodePaymentResponseHeader(header) : null;
console.log(JSON.stringify({ status: response.status, body, paymentResponse }));
