# Sends one message with Ruby's net-smtp as an application does, for
# tests/integration/test_clients_ruby_net_smtp.py. The settings come as JSON on
# stdin; the outcome goes to stdout as one JSON line (exit 0 sent, 1 not). net-smtp
# sends what it is given, so the message is built here as a script would, with
# the stdlib's pack: quoted-printable text, a base64 attachment.
require 'json'
require 'net/smtp'
require 'openssl'
require 'securerandom'

s = JSON.parse($stdin.read)
boundary = "=_#{SecureRandom.hex(12)}"
message = +''
message << "From: #{s['user']}\r\nTo: bob@example.net\r\n"
message << "Subject: =?UTF-8?B?#{[s['subject']].pack('m0')}?=\r\n"
message << "Date: #{Time.now.strftime('%a, %d %b %Y %H:%M:%S %z')}\r\n"
message << "Message-ID: <#{SecureRandom.hex(16)}@client.test>\r\nMIME-Version: 1.0\r\n"
message << "Content-Type: multipart/mixed; boundary=\"#{boundary}\"\r\n\r\n"
message << "--#{boundary}\r\nContent-Type: text/plain; charset=UTF-8\r\n"
message << "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
message << [s['text']].pack('M').gsub("\n", "\r\n")
if s['attachment']
  name = File.basename(s['attachment'])
  message << "\r\n--#{boundary}\r\nContent-Type: application/octet-stream\r\n"
  message << "Content-Disposition: attachment; filename=\"#{name}\"\r\n"
  message << "Content-Transfer-Encoding: base64\r\n\r\n"
  message << [File.binread(s['attachment'])].pack('m').gsub("\n", "\r\n")
end
if s['dots'] # ASCII lines sent as they are: only net-smtp's dot-stuffing carries them
  message << "\r\n--#{boundary}\r\nContent-Type: text/plain; charset=us-ascii\r\n"
  message << "Content-Disposition: attachment; filename=\"#{s['dotsName']}\"\r\n"
  message << "Content-Transfer-Encoding: 7bit\r\n\r\n"
  message << s['dots'].gsub("\n", "\r\n")
end
message << "\r\n--#{boundary}--\r\n"

context = OpenSSL::SSL::SSLContext.new
context.set_params(ca_file: s['ca'], verify_mode: OpenSSL::SSL::VERIFY_PEER)
smtp = Net::SMTP.new('localhost', s['port'])
s['tls'] ? smtp.enable_tls(context) : smtp.enable_starttls(context)
begin
  response = nil
  smtp.start('client.test', s['user'], s['pass'], s['auth'].to_sym) do |session|
    response = session.send_message(message, s['user'], 'bob@example.net')
  end
  puts JSON.generate(ok: true, status: response.status, response: response.string.strip,
                     version: Net::SMTP::VERSION)
rescue Net::SMTPError, OpenSSL::SSL::SSLError => e
  puts JSON.generate(ok: false, class: e.class.name, message: e.message.strip,
                     version: Net::SMTP::VERSION)
  exit 1
end
