// Sends one message with Jakarta Mail (Debian's libjakarta-mail-java) as a Java
// application does, for tests/integration/test_clients_jakarta_mail.py. The
// settings come on stdin as name=value lines, each value base64 (UTF-8); the
// Jakarta Mail session properties are given as "prop.<name>". The outcome goes
// to stdout as lines "ok=true|false", "class=...", "message=..." (exit 0 sent, 1 not).
import jakarta.mail.Message;
import jakarta.mail.MessagingException;
import jakarta.mail.Session;
import jakarta.mail.Transport;
import jakarta.mail.internet.InternetAddress;
import jakarta.mail.internet.MimeBodyPart;
import jakarta.mail.internet.MimeMessage;
import jakarta.mail.internet.MimeMultipart;
import java.io.BufferedReader;
import java.io.FileInputStream;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.security.KeyStore;
import java.security.cert.CertificateFactory;
import java.util.Base64;
import java.util.HashMap;
import java.util.Map;
import java.util.Properties;
import javax.net.ssl.SSLContext;
import javax.net.ssl.TrustManagerFactory;

public class Send {
    public static void main(String[] args) throws Exception {
        Map<String, String> s = new HashMap<>();
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        for (String line; (line = in.readLine()) != null; ) {
            int eq = line.indexOf('=');
            if (eq > 0) {
                s.put(line.substring(0, eq),
                      new String(Base64.getDecoder().decode(line.substring(eq + 1)), StandardCharsets.UTF_8));
            }
        }
        Properties props = new Properties();
        for (Map.Entry<String, String> e : s.entrySet()) {
            if (e.getKey().startsWith("prop.")) {
                props.setProperty(e.getKey().substring(5), e.getValue());
            }
        }
        // Trust the server's private CA only (not the JVM's cacerts), as an
        // application configured with a CA file does.
        KeyStore trust = KeyStore.getInstance(KeyStore.getDefaultType());
        trust.load(null, null);
        try (FileInputStream ca = new FileInputStream(s.get("ca"))) {
            trust.setCertificateEntry("ca", CertificateFactory.getInstance("X.509").generateCertificate(ca));
        }
        TrustManagerFactory tmf = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
        tmf.init(trust);
        SSLContext tls = SSLContext.getInstance("TLS");
        tls.init(null, tmf.getTrustManagers(), null);
        props.put("mail.smtp.ssl.socketFactory", tls.getSocketFactory());

        Session session = Session.getInstance(props);
        try {
            MimeMessage msg = new MimeMessage(session);
            msg.setFrom(new InternetAddress(s.get("user")));
            msg.setRecipient(Message.RecipientType.TO, new InternetAddress("bob@example.net"));
            msg.setSubject(s.get("subject"), "UTF-8");
            MimeMultipart parts = new MimeMultipart();
            MimeBodyPart text = new MimeBodyPart();
            text.setText(s.get("text"), "UTF-8");
            parts.addBodyPart(text);
            if (s.containsKey("attachment")) {
                MimeBodyPart file = new MimeBodyPart();
                file.attachFile(s.get("attachment"));
                parts.addBodyPart(file);
            }
            if (s.containsKey("dots")) {
                // ASCII lines sent as they are: only SMTP's dot-stuffing carries them.
                MimeBodyPart dots = new MimeBodyPart();
                dots.setText(s.get("dots"), "us-ascii");
                dots.setFileName(s.get("dotsName"));
                dots.setHeader("Content-Transfer-Encoding", "7bit");
                parts.addBodyPart(dots);
            }
            msg.setContent(parts);
            Transport.send(msg, s.get("user"), s.get("pass"));
            System.out.println("ok=true");
        } catch (MessagingException e) {
            System.out.println("ok=false");
            System.out.println("class=" + e.getClass().getName());
            System.out.println("message=" + String.valueOf(e.getMessage()).strip().replace("\n", "\\n"));
            System.exit(1);
        }
    }
}
