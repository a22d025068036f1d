# Reading a program's Prometheus endpoint from bash (source this file; no curl needed).
#   body=$(scrape PORT)            GET http://127.0.0.1:PORT/metrics, the body only
#   metric_value 'fl_round{run="r"}' "$body"   the sample's value ("" when absent)

scrape() {
  exec 3<> "/dev/tcp/127.0.0.1/$1" || return 1
  printf 'GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' >&3
  sed '1,/^\r$/d' <&3
  exec 3<&-
}

metric_value() { awk -v k="$1" '$1 == k { print $2; exit }' <<< "$2"; }
