// A real OpenID Provider (the certified `oidc-provider` package, installed in
// tests/idp by bootstrap) with a public client for the approvers' page: the
// authorization code flow with PKCE, its own login and consent pages
// (devInteractions: any login, any password), ID tokens carrying email and
// groups. Only for tests/e2e/test_approver_page.py.
//
//   node oidc_idp.mjs --port 9000 --redirect http://127.0.0.1:8080/approvals
//
// Groups: the login `alice` is in `security`; everyone else in `engineering`.

import { generateKeyPairSync } from "node:crypto";
import { parseArgs } from "node:util";

import Provider from "../idp/node_modules/oidc-provider/lib/index.js";

const { values } = parseArgs({
  options: { port: { type: "string" }, redirect: { type: "string" } },
});
const port = Number(values.port);
const issuer = `http://127.0.0.1:${port}`;
const { privateKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: "jwk" }), kid: "browser-test", alg: "RS256", use: "sig" };

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: "warden-approvals",
      token_endpoint_auth_method: "none",
      grant_types: ["authorization_code"],
      response_types: ["code"],
      redirect_uris: [values.redirect],
    },
  ],
  jwks: { keys: [jwk] },
  cookies: { keys: ["browser-test-cookie-key-of-enough-length"] },
  pkce: { required: () => true },
  // The page reads its claims from the ID token (the access token is opaque here).
  conformIdTokenClaims: false,
  claims: { openid: ["sub"], email: ["email"], profile: ["groups"] },
  findAccount: (ctx, id) => ({
    accountId: id,
    claims: () => ({ sub: id, email: `${id}@example.com`, groups: id === "alice" ? ["security"] : ["engineering"] }),
  }),
  // CORS for the token request: only from the public client's own origin.
  clientBasedCORS: (ctx, origin, client) =>
    client.clientAuthMethod === "none" && client.redirectUris.some((uri) => new URL(uri).origin === origin),
  features: { devInteractions: { enabled: true } },
});

provider.listen(port, "127.0.0.1", () => {
  console.log(`oidc-provider listening on ${issuer}`);
});
