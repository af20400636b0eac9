// x402 v1 client (x402-fetch 1.2.0) paying a farebox server.
// usage: node v1_fetch_client.mjs <url> <rpc> <payer key> <token>
// v1 knows only named networks: the chain must be Base Sepolia's id (84532), the network
// `base-sepolia`. Prints one JSON line: {status, body, paymentResponse} (paymentResponse decoded
// from X-PAYMENT-RESPONSE). Exits 1 on any error.
import { wrapFetchWithPayment, decodeXPaymentResponse } from "x402-fetch";
import { createWalletClient, http, publicActions } from "viem";
import { privateKeyToAccount } from "viem/accounts";
import { baseSepolia } from "viem/chains";

const [url, rpc, key, token] = process.argv.slice(2);
if (!token) {
  console.error("usage: node v1_fetch_client.mjs <url> <rpc> <payer key> <token>");
  process.exit(2);
}
// The wallet's chain picks the v1 network (`base-sepolia`); its transport is the local chain.
const wallet = createWalletClient({
  account: privateKeyToAccount(key),
  chain: baseSepolia,
  transport: http(rpc),
}).extend(publicActions);
const chainId = await wallet.getChainId();
if (chainId !== baseSepolia.id) {
  throw new Error(`the chain at ${rpc} has id ${chainId}, x402 v1 needs ${baseSepolia.id}`);
}
// At most 1 token (6 decimals) per payment.
const paidFetch = wrapFetchWithPayment(fetch, wallet, 1_000_000n);
const response = await paidFetch(url, { signal: AbortSignal.timeout(60_000) });
const body = await response.text();
const header = response.headers.get("X-PAYMENT-RESPONSE");
const paymentResponse = header ? decodeXPaymentResponse(header) : null;
// The token the requirement named must be the one this run deployed.
console.log(JSON.stringify({ status: response.status, body, paymentResponse, token }));
