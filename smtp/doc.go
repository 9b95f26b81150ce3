// Package smtp is the protocol core of smtpkit: one SMTP submission
// session on any byte stream, with no goroutines of its own and no
// dialing. It is independent of the environment and runs under
// GOOS=wasip1 and GOOS=js (WebAssembly) as well as on servers.
//
// A session is a [Client]: [Connect] starts one on a transport that is
// already TLS, [ConnectStartTLS] upgrades a plain one with STARTTLS (and
// never falls back to plaintext). [Client.Login] and [Client.LoginWith]
// authenticate; [Client.Send] delivers a message. For throughput, the
// two halves of Send are public: [Client.WriteTx] writes a transaction
// without reading, [Client.ReadTx] reads its replies, and the client
// tracks for each transaction whether its commit point has been written
// ([Tx.Committed]), which is what a caller needs to never deliver a
// message twice. One goroutine may drive both halves in turn, or one
// goroutine may write while another reads every reply
// ([Client.ReadReplies]), so that replies are read the moment they
// arrive while bodies are written.
//
// Every error is an [*Error] with the step ([Op]) and a [Kind], the
// server's codes, and classification by [IsTemporary] and [IsPermanent].
//
// Implemented:
//
//   - RFC 5321 SMTP, with the §4.5.3.2 timeouts when a context has no deadline
//   - RFC 3207 STARTTLS (capabilities discarded, response injection refused)
//   - RFC 8314 implicit TLS (with the transport package)
//   - RFC 2920 PIPELINING, RFC 3030 CHUNKING (BDAT)
//   - RFC 1870 SIZE, RFC 6152 8BITMIME, RFC 6531 SMTPUTF8
//   - RFC 2034 and RFC 3463 enhanced status codes
//   - RFC 3461 DSN parameters (RET, ENVID, NOTIFY, ORCPT with xtext, or
//     RFC 6533's utf-8 type for an internationalized recipient)
//   - RFC 4954 AUTH with RFC 4616 PLAIN, LOGIN, RFC 5802/7677
//     SCRAM-SHA-256, RFC 7628 OAUTHBEARER, XOAUTH2 and RFC 2195 CRAM-MD5
//   - RFC 5322 §2.1.1 line length; bare CR and LF refused (SMTP smuggling)
package smtp
