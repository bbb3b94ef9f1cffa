export LINEPULSE_KAFKA=127.0.0.1:9092 LINEPULSE_DATA_DIR=/tmp/lp-data
linepulse kpi --config examples/classic-oee/plant.yaml --api --port 8080 & KPI=$!   # worker + API in one process
for i in $(seq 60); do curl -sf http://127.0.0.1:8080/readyz >/dev/null && break; sleep 1; done
linepulse produce --config examples/classic-oee/plant.yaml examples/classic-oee/events.jsonl
URL='http://127.0.0.1:8080/v1/kpis/history?from=2026-11-02T00:00:00Z&window=shift&machine=filler-1'
for i in $(seq 60); do curl -sf "$URL" | grep -q '"oee"' && break; sleep 1; done   # worker computes, API stores
curl -s "$URL"; echo
kill $KPI; wait $KPI
