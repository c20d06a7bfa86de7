echo "Hello from Smith's demo job $SMITH_JOB_ID"
echo "kernel: $(uname -sr), $(nproc) CPU(s)"
for step in checkout build test; do
  echo "== $step"
  sleep 0.3
  echo "$step: ok"
done
echo "all steps passed"
