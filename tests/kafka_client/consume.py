"""Reads a topic from its start with librdkafka (PyPI confluent-kafka), as any other Kafka
consumer of vap's topics would. Reads one JSON plan on stdin:
  {"brokers": "127.0.0.1:9092", "topic": "...", "count": 3, "timeout_s": 30}
Prints the first `count` records: [{"partition", "offset", "key": hex, "value": hex}].
"""

import json
import sys
import time

from confluent_kafka import Consumer, KafkaException


def main():
    plan = json.load(sys.stdin)
    consumer = Consumer({
        "bootstrap.servers": plan["brokers"],
        "group.id": "vap-test-reader",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    consumer.subscribe([plan["topic"]])
    out, deadline = [], time.monotonic() + plan.get("timeout_s", 30)
    while len(out) < plan["count"] and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        if msg.error():
            raise KafkaException(msg.error())
        out.append({
            "partition": msg.partition(),
            "offset": msg.offset(),
            "key": None if msg.key() is None else msg.key().hex(),
            "value": None if msg.value() is None else msg.value().hex(),
        })
    consumer.close()
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
