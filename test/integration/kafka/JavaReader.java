// Reads a topic from the beginning with Kafka's own Java consumer (kafka-clients) and prints
// one line per record: partition TAB headers(k:v,...) TAB key TAB value. Used by
// interop.test.ts because kafka.tools.ConsoleConsumer lives in the kafka-tools artifact
// (org.apache.kafka.tools.consumer.ConsoleConsumer since 3.7), which the brokers script does not fetch.
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.serialization.StringDeserializer;

public class JavaReader {
  public static void main(String[] args) {
    String bootstrap = args[0];
    String topic = args[1];
    int max = Integer.parseInt(args[2]);
    Properties props = new Properties();
    props.put("bootstrap.servers", bootstrap);
    props.put("group.id", "java-reader-" + System.nanoTime());
    props.put("auto.offset.reset", "earliest");
    props.put("enable.auto.commit", "false");
    props.put("isolation.level", "read_committed");
    props.put("key.deserializer", StringDeserializer.class.getName());
    props.put("value.deserializer", StringDeserializer.class.getName());
    long deadline = System.currentTimeMillis() + 60_000;
    int seen = 0;
    try (KafkaConsumer<String, String> consumer = new KafkaConsumer<>(props)) {
      consumer.subscribe(List.of(topic));
      while (seen < max && System.currentTimeMillis() < deadline) {
        for (ConsumerRecord<String, String> r : consumer.poll(Duration.ofMillis(500))) {
          List<String> hs = new ArrayList<>();
          for (Header h : r.headers()) hs.add(h.key() + ":" + new String(h.value(), java.nio.charset.StandardCharsets.UTF_8));
          System.out.println("Partition:" + r.partition() + "\t" + String.join(",", hs) + "\t" + r.key() + "\t" + r.value());
          seen++;
        }
      }
    }
    System.out.flush();
    System.exit(seen >= max ? 0 : 3);
  }
}
