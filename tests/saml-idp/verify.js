// Checks every XML signature in a SAML message against one certificate, with
// xml-crypto (the library saml-idp signs with): the tests use it to show that
// a message they tampered with still carries a valid signature (so a refusal
// is the control plane's judgement, not a broken signature) or no longer does.
//
//   node verify.js CERT.pem < message.xml
//
// prints JSON: [{"parent", "reference", "signatureAlgorithm",
// "digestAlgorithm", "valid", "errors"}], one entry per ds:Signature in
// document order ("parent": the local name of the element holding it).
'use strict';
const fs = require('fs');
const { DOMParser } = require('@xmldom/xmldom');
const { SignedXml, xpath } = require('xml-crypto');

const cert = fs.readFileSync(process.argv[2]);
const xml = fs.readFileSync(0, 'utf8');
const doc = new DOMParser().parseFromString(xml, 'text/xml');
const signatures = xpath(doc, "//*[local-name(.)='Signature' and namespace-uri(.)='http://www.w3.org/2000/09/xmldsig#']");
const answer = signatures.map((node) => {
  const sig = new SignedXml();
  sig.keyInfoProvider = { getKeyInfo: () => '', getKey: () => cert };
  sig.loadSignature(node);
  let valid = false;
  let errors = [];
  try {
    valid = sig.checkSignature(xml);
    errors = sig.validationErrors;
  } catch (err) {
    errors = [String(err.message || err)];
  }
  return {
    parent: node.parentNode.localName,
    reference: sig.references.map((r) => r.uri).join(' '),
    signatureAlgorithm: sig.signatureAlgorithm,
    digestAlgorithm: sig.references.map((r) => r.digestAlgorithm).join(' '),
    valid,
    errors,
  };
});
process.stdout.write(JSON.stringify(answer) + '\n');
