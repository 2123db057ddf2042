// The user profile and attribute list of the test SAML IdP (saml-idp's
// --configFile). saml-idp signs an assertion for `user`, whose fields the
// sign-in form overwrites: userName is the NameID, and each `metadata` entry
// becomes one <saml:Attribute Name="<id>"> (NameFormat basic); a multiValue
// entry is split on "," into one <saml:AttributeValue> per value.
// tests/harness/saml_idp.py fills the form for each sign-in.
module.exports = {
  user: {
    userName: 'alice@example.com',
    nameIdFormat: 'urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress',
    email: 'alice@example.com',
    groups: 'engineering',
  },
  metadata: [
    { id: 'email', optional: false, displayName: 'E-Mail Address', description: "The user's e-mail address", multiValue: false },
    { id: 'groups', optional: true, displayName: 'Groups', description: "The user's groups", multiValue: true },
  ],
};
