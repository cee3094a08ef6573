// Checks that the local Kafka runs transactions the way Tally uses them; run by
// `deploy/infra.sh verify` as a single-file Java program on the broker's classpath.
//
// 1. The cluster has finalized transaction.version >= 2 (KIP-890's server-side protocol).
// 2. A transactional producer writes 40 records and aborts, then 40 records and commits, over a
//    fresh topic of 8 partitions: read_committed sees exactly the 40 committed records and
//    read_uncommitted sees all 80.
// 3. Read-process-write: a consumer group on the new protocol (group.protocol=consumer) reads
//    the committed records and a second transactional producer writes them to an output topic
//    together with the group's offsets (sendOffsetsToTransaction), then commits. The output has
//    the 40 records and the group's committed offsets are those of the copied records.
// The two topics are deleted at the end. Exits non-zero with a message on any failure.
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.UUID;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.FinalizedVersionRange;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.admin.TransactionDescription;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;

public class TxnCheck {
    static final int PARTITIONS = 8;
    static final int RECORDS = 40;
    static final Duration DEADLINE = Duration.ofSeconds(60);

    public static void main(String[] args) throws Exception {
        String brokers = args.length > 0 ? args[0] : "127.0.0.1:9092";
        String run = UUID.randomUUID().toString().substring(0, 8);
        String input = "tally-infra-check-in-" + run;
        String output = "tally-infra-check-out-" + run;
        String group = "tally-infra-check-" + run;
        try (Admin admin = Admin.create(Map.of("bootstrap.servers", brokers))) {
            FinalizedVersionRange tv = admin.describeFeatures().featureMetadata()
                    .get(30, TimeUnit.SECONDS).finalizedFeatures().get("transaction.version");
            short level = tv == null ? 0 : tv.maxVersionLevel();
            check(level >= 2, "transaction.version is " + level + ", want >= 2");
            admin.createTopics(List.of(new NewTopic(input, PARTITIONS, (short) 1),
                    new NewTopic(output, PARTITIONS, (short) 1))).all().get(30, TimeUnit.SECONDS);
            try {
                String txnId = group + "-writer";
                try (KafkaProducer<String, String> producer = producer(brokers, txnId)) {
                    producer.initTransactions();
                    producer.beginTransaction();
                    for (int i = 0; i < RECORDS; i++) {
                        producer.send(new ProducerRecord<>(input, "k" + i, "aborted-" + i));
                    }
                    producer.flush();
                    producer.abortTransaction();
                    producer.beginTransaction();
                    for (int i = 0; i < RECORDS; i++) {
                        producer.send(new ProducerRecord<>(input, "k" + i, "committed-" + i));
                    }
                    producer.commitTransaction();
                }
                TransactionDescription txn = admin.describeTransactions(List.of(txnId))
                        .description(txnId).get(30, TimeUnit.SECONDS);
                List<String> committed = readAll(brokers, input, "read_committed");
                List<String> everything = readAll(brokers, input, "read_uncommitted");
                check(committed.size() == RECORDS && committed.stream().allMatch(v -> v.startsWith("committed-")),
                        "read_committed saw " + committed.size() + " records, want " + RECORDS + " committed ones");
                check(everything.size() == 2 * RECORDS,
                        "read_uncommitted saw " + everything.size() + " records, want " + 2 * RECORDS);
                System.out.printf("abort+commit: read_committed %d, read_uncommitted %d, producer epoch %d, state %s%n",
                        committed.size(), everything.size(), txn.producerEpoch(), txn.state());

                Map<TopicPartition, OffsetAndMetadata> expected = new HashMap<>();
                int copied = readProcessWrite(brokers, input, output, group, expected);
                List<String> out = readAll(brokers, output, "read_committed");
                check(copied == RECORDS && out.size() == RECORDS,
                        "read-process-write copied " + copied + ", output has " + out.size() + ", want " + RECORDS);
                Map<TopicPartition, OffsetAndMetadata> offsets = admin.listConsumerGroupOffsets(group)
                        .partitionsToOffsetAndMetadata().get(30, TimeUnit.SECONDS);
                for (var e : expected.entrySet()) {
                    OffsetAndMetadata got = offsets.get(e.getKey());
                    check(got != null && got.offset() == e.getValue().offset(),
                            "group offset of " + e.getKey() + " is " + got + ", want " + e.getValue().offset());
                }
                System.out.printf("read-process-write: %d records copied, group offsets committed in the transaction%n", copied);
            } finally {
                admin.deleteConsumerGroups(List.of(group)).all().get(30, TimeUnit.SECONDS);
                admin.deleteTopics(List.of(input, output)).all().get(30, TimeUnit.SECONDS);
            }
        }
        System.out.println("Kafka transactions OK (transaction.version >= 2)");
    }

    static KafkaProducer<String, String> producer(String brokers, String txnId) {
        Properties p = new Properties();
        p.put("bootstrap.servers", brokers);
        p.put("transactional.id", txnId);
        p.put("enable.idempotence", "true");
        p.put("acks", "all");
        p.put("key.serializer", StringSerializer.class.getName());
        p.put("value.serializer", StringSerializer.class.getName());
        return new KafkaProducer<>(p);
    }

    static Properties consumerProps(String brokers, String isolation) {
        Properties p = new Properties();
        p.put("bootstrap.servers", brokers);
        p.put("isolation.level", isolation);
        p.put("enable.auto.commit", "false");
        p.put("auto.offset.reset", "earliest");
        p.put("key.deserializer", StringDeserializer.class.getName());
        p.put("value.deserializer", StringDeserializer.class.getName());
        return p;
    }

    // Reads every partition from the start up to its end offset (the last stable offset under
    // read_committed), without a consumer group.
    static List<String> readAll(String brokers, String topic, String isolation) {
        List<String> values = new ArrayList<>();
        try (KafkaConsumer<String, String> consumer = new KafkaConsumer<>(consumerProps(brokers, isolation))) {
            List<TopicPartition> parts = new ArrayList<>();
            for (int p = 0; p < PARTITIONS; p++) parts.add(new TopicPartition(topic, p));
            consumer.assign(parts);
            consumer.seekToBeginning(parts);
            Map<TopicPartition, Long> ends = consumer.endOffsets(parts);
            long deadline = System.nanoTime() + DEADLINE.toNanos();
            while (parts.stream().anyMatch(tp -> consumer.position(tp) < ends.get(tp))) {
                check(System.nanoTime() < deadline, "timed out reading " + topic + " with " + isolation);
                for (ConsumerRecord<String, String> r : consumer.poll(Duration.ofMillis(200))) values.add(r.value());
            }
        }
        return values;
    }

    // Exactly-once copy of `input` to `output` by a consumer group on the new group protocol.
    static int readProcessWrite(String brokers, String input, String output, String group,
                                Map<TopicPartition, OffsetAndMetadata> committed) {
        Properties cp = consumerProps(brokers, "read_committed");
        cp.put("group.id", group);
        cp.put("group.protocol", "consumer");
        int copied = 0;
        try (KafkaConsumer<String, String> consumer = new KafkaConsumer<>(cp);
             KafkaProducer<String, String> producer = producer(brokers, group + "-copier")) {
            producer.initTransactions();
            consumer.subscribe(List.of(input));
            long deadline = System.nanoTime() + DEADLINE.toNanos();
            while (copied < RECORDS) {
                check(System.nanoTime() < deadline, "timed out in read-process-write after " + copied + " records");
                var records = consumer.poll(Duration.ofMillis(200));
                if (records.isEmpty()) continue;
                producer.beginTransaction();
                Map<TopicPartition, OffsetAndMetadata> next = new HashMap<>();
                for (ConsumerRecord<String, String> r : records) {
                    producer.send(new ProducerRecord<>(output, r.key(), r.value().toUpperCase()));
                    next.put(new TopicPartition(r.topic(), r.partition()), new OffsetAndMetadata(r.offset() + 1));
                    copied++;
                }
                producer.sendOffsetsToTransaction(next, consumer.groupMetadata());
                producer.commitTransaction();
                committed.putAll(next);
            }
        }
        return copied;
    }

    static void check(boolean ok, String message) {
        if (!ok) {
            System.err.println("Kafka transaction check FAILED: " + message);
            System.exit(1);
        }
    }
}
