<?php
// Sends one message with PHPMailer (Debian's libphp-phpmailer) as a PHP
// application does, for tests/integration/test_clients_phpmailer.py. The
// settings come as JSON on stdin; the outcome goes to stdout as one JSON line
// (exit 0 sent, 1 not), with PHPMailer's error and the SMTP dialogue it logged.
require '/usr/share/php/libphp-phpmailer/autoload.php';

use PHPMailer\PHPMailer\Exception;
use PHPMailer\PHPMailer\PHPMailer;
use PHPMailer\PHPMailer\SMTP;

$s = json_decode(file_get_contents('php://stdin'), true);
$dialogue = [];
$mail = new PHPMailer(true);  // exceptions on, as PHPMailer's own example
$mail->isSMTP();
$mail->Host = 'localhost';
$mail->Port = $s['port'];
$mail->SMTPSecure = $s['secure'];  // 'tls': STARTTLS, 'ssl': implicit TLS
$mail->SMTPAuth = true;
$mail->Username = $s['user'];
$mail->Password = $s['pass'];
if ($s['authType'] !== null) {
    $mail->AuthType = $s['authType'];
}
$mail->Helo = 'client.test';
$mail->SMTPOptions = ['ssl' => [
    'cafile' => $s['ca'], 'verify_peer' => true, 'verify_peer_name' => true,
]];
$mail->SMTPDebug = SMTP::DEBUG_SERVER;
$mail->Debugoutput = function ($line, $level) use (&$dialogue) {
    $dialogue[] = rtrim($line);
};
$mail->CharSet = PHPMailer::CHARSET_UTF8;
$mail->setFrom($s['user']);
$mail->addAddress('bob@example.net');
$mail->Subject = $s['subject'];
$mail->Body = $s['text'];
if ($s['attachment'] !== null) {
    $mail->addAttachment($s['attachment']);
}
if ($s['dots'] !== null) {  // ASCII lines sent as they are: only dot-stuffing carries them
    $mail->addStringAttachment($s['dots'], $s['dotsName'], PHPMailer::ENCODING_7BIT, 'text/plain');
}
try {
    $ok = $mail->send();
    $error = null;
} catch (Exception $e) {
    $ok = false;
    $error = $e->getMessage();
}
echo json_encode([
    'ok' => $ok,
    'error' => $error,
    'smtp' => $mail->getSMTPInstance()->getError(),
    'dialogue' => $ok ? [] : $dialogue,  // a sent message's would hold all its lines
    'version' => PHPMailer::VERSION,
], JSON_UNESCAPED_UNICODE | JSON_UNESCAPED_SLASHES), "\n";
exit($ok ? 0 : 1);
