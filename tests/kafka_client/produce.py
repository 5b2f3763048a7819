"""Produces records with librdkafka (PyPI confluent-kafka): the independent Kafka client the
integration tests use to show vap reads, or sets aside, whatever another client may write.

Reads one JSON plan on stdin:
  {"brokers": "127.0.0.1:9092",
   "batches": [{"compression": "gzip", "transactional": "commit" | "abort" | null,
                "records": [{"topic": ..., "partition": 0, "key": hex | null,
                             "value": hex | null, "headers": [[name, hex]],
                             "timestamp_ms": int | null}]}]}
Each batch is produced by its own producer and flushed before the next starts, so a batch
reaches the broker as one record batch. Prints, per batch, the offsets it was given.
"""

import json
import sys

from confluent_kafka import KafkaException, Producer


def unhex(value):
    return None if value is None else bytes.fromhex(value)


def produce(brokers, batch, n):
    config = {
        "bootstrap.servers": brokers,
        "compression.type": batch.get("compression") or "none",
        "linger.ms": 100,
        "message.max.bytes": 10_000_000,
        "enable.idempotence": bool(batch.get("transactional")),
    }
    if batch.get("transactional"):
        config["transactional.id"] = f"vap-test-{n}"
    producer = Producer(config)
    offsets, errors = [], []

    def delivered(err, msg):
        if err is not None:
            errors.append(str(err))
        else:
            offsets.append(msg.offset())

    if batch.get("transactional"):
        producer.init_transactions(30)
        producer.begin_transaction()
    for r in batch["records"]:
        kwargs = {
            "partition": r["partition"],
            "key": unhex(r.get("key")),
            "value": unhex(r.get("value")),
            "headers": [(name, unhex(v)) for name, v in r.get("headers", [])],
            "on_delivery": delivered,
        }
        if r.get("timestamp_ms") is not None:
            kwargs["timestamp"] = r["timestamp_ms"]
        producer.produce(r["topic"], **kwargs)
    if batch.get("transactional") == "commit":
        producer.commit_transaction(30)
    elif batch.get("transactional") == "abort":
        producer.flush(30)
        producer.abort_transaction(30)
    if producer.flush(30) != 0:
        errors.append("records left unsent")
    return {"offsets": sorted(offsets), "errors": errors}


def main():
    plan = json.load(sys.stdin)
    out = []
    for n, batch in enumerate(plan["batches"]):
        try:
            out.append(produce(plan["brokers"], batch, n))
        except KafkaException as e:
            out.append({"offsets": [], "errors": [str(e)]})
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
