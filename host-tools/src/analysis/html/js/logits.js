// logits.js — direct logit attribution per head and position as stacked bars, and
// term importance by path order as bar charts.
function rowColour(i){
  const n=L*H;if(i===0)return '#6b7280';if(i===n+1)return '#cbd2d9';
  const k=i-1,l=Math.floor(k/H),h=k%H;
  return 'hsl('+Math.round((h*360/H+l*23)%360)+','+(62-8*(l%2))+'%,'+(l%2?58:44)+'%)';
}
function drawDla(){
  const p=D.prompts[S.prompt],d=p.dla,n=p.tokens.length,box=$('dla-chart');box.innerHTML='';
  $('dla-legend').innerHTML='';
  if(!d){$('dla-what').textContent='Not included for this prompt (the file keeps the DLA of the first prompts only, to stay small); the first prompt has it.';$('dla-src').textContent='';return;}
  $('dla-what').textContent='Attributed: '+d.what+'. Max |sum − model logit| '+d.max_abs_error.toExponential(1)+'.';
  $('dla-src').textContent='Values: '+p.source_dla+'.';
  const W=Math.max(400,(box.clientWidth||1300)),Hh=300,ml=48,mb=64,mt=10;
  const pw=W-ml-10,ph=Hh-mb-mt,bw=pw/n;
  let hi=1e-9,lo=-1e-9;
  for(let i=0;i<n;i++){let a=0,b=0;for(const r of d.rows){const v=r[i];if(v>0)a+=v;else b+=v;}hi=Math.max(hi,a,d.model_logit[i]);lo=Math.min(lo,b,d.model_logit[i]);}
  const y=v=>mt+(hi-v)/(hi-lo)*ph;
  const [c,x]=mkCanvas(box,W,Hh,'dla');c.id='dla-canvas';x.fillStyle='#fff';x.fillRect(0,0,W,Hh);
  x.strokeStyle='#e3e6ea';x.fillStyle='#555';x.font='10px ui-monospace,monospace';x.textAlign='right';x.textBaseline='middle';
  const tick=Math.pow(10,Math.floor(Math.log10((hi-lo)/4)));const st=(hi-lo)/tick>8?tick*2:tick;
  const dec=Math.max(0,-Math.floor(Math.log10(st)+1e-9));for(let v=Math.ceil(lo/st)*st;v<=hi;v+=st){x.beginPath();x.moveTo(ml,y(v)+.5);x.lineTo(W-10,y(v)+.5);x.stroke();x.fillText((Math.abs(v)<st/2?0:v).toFixed(dec),ml-4,y(v));}
  const [sl,sh]=S.head,sel=1+sl*H+sh;
  for(let i=0;i<n;i++){
    let up=0,dn=0;const x0=ml+i*bw,w=Math.max(1,bw-(bw>4?1:0));
    d.rows.forEach((r,k)=>{const v=r[i];if(!v)return;x.fillStyle=rowColour(k);
      if(v>0){x.fillRect(x0,y(up+v),w,y(up)-y(up+v));if(k===sel&&bw>3){x.strokeStyle='#000';x.strokeRect(x0+.5,y(up+v)+.5,w-1,y(up)-y(up+v)-1);}up+=v;}
      else{x.fillRect(x0,y(dn),w,y(dn+v)-y(dn));if(k===sel&&bw>3){x.strokeStyle='#000';x.strokeRect(x0+.5,y(dn)+.5,w-1,y(dn+v)-y(dn)-1);}dn+=v;}});
    x.fillStyle='#000';x.fillRect(x0,y(d.model_logit[i])-1,w,2);
  }
  x.strokeStyle='#333';x.beginPath();x.moveTo(ml,y(0)+.5);x.lineTo(W-10,y(0)+.5);x.stroke();
  x.fillStyle='#333';x.textAlign='right';x.textBaseline='middle';
  const step=Math.max(1,Math.ceil(12/bw));
  for(let i=0;i<n;i+=step){x.save();x.translate(ml+(i+.5)*bw,Hh-mb+4);x.rotate(-Math.PI/3);x.fillText(short(i+' '+p.labels[i],11),0,0);x.restore();}
  c.addEventListener('mousemove',ev=>{const b=c.getBoundingClientRect();const i=Math.floor((ev.clientX-b.left-ml)/bw);if(i<0||i>=n){hideTip();return;}
    const parts=d.rows.map((r,k)=>[r[i],d.names[k]]).sort((a,b)=>Math.abs(b[0])-Math.abs(a[0])).slice(0,8);
    const sum=d.rows.reduce((s,r)=>s+r[i],0);
    showTip(ev,'position '+i+' '+p.labels[i]+' → '+d.targets[i]+'\nsum '+fmt(sum)+'  model logit '+fmt(d.model_logit[i])+'\n'+parts.map(q=>q[1].padEnd(7)+' '+fmt(q[0])).join('\n'));});
  c.addEventListener('mouseleave',hideTip);
  countColours(c);c.classList.add('figure');
  const keys=$('dla-legend');keys.innerHTML='';
  let order=d.names.map((s,k)=>[k,d.rows[k].reduce((a,v)=>a+Math.abs(v),0)]);
  if(order.length>34){order=order.sort((a,b)=>b[1]-a[1]).slice(0,32);}
  for(const [k] of order){const s=el('span',null,keys);el('i',{style:'background:'+rowColour(k)},s);s.appendChild(document.createTextNode(d.names[k]));}
  if(order.length<d.names.length)el('span',{class:'hint'},keys,'… '+(d.names.length-order.length)+' smaller rows: hover the bars');
}
// Horizontal bars: items = [[label, value, note]].
function bars(parent,title,items,id){
  const d=el('div',null,parent);el('h3',null,d,title);
  const W=640,rh=18,ml=200,mr=150,Hh=items.length*rh+24;
  const [c,x]=mkCanvas(d,W,Hh,'bars');c.id=id;x.fillStyle='#fff';x.fillRect(0,0,W,Hh);
  const mx=Math.max(1e-9,...items.map(i=>Math.abs(i[1]))),neg=items.some(i=>i[1]<0);
  const span=W-ml-mr,z=neg?ml+span/2:ml,sc=(neg?span/2:span)/mx;
  x.font='11px ui-monospace,monospace';x.textBaseline='middle';
  items.forEach((it,i)=>{const yy=6+i*rh;x.fillStyle='#222';x.textAlign='right';x.fillText(short(it[0],30),ml-6,yy+rh/2-1);
    x.fillStyle=it[1]>=0?'#d0543f':'#3b78c2';const w=it[1]*sc;x.fillRect(Math.min(z,z+w),yy+2,Math.abs(w),rh-5);
    x.fillStyle='#333';x.textAlign='left';x.fillText((it[1]>=0?'+':'')+it[1].toFixed(3)+(it[2]?' '+it[2]:''),Math.max(z,z+w)+4,yy+rh/2-1);});
  x.strokeStyle='#555';x.beginPath();x.moveTo(z+.5,4);x.lineTo(z+.5,Hh-16);x.stroke();
  x.fillStyle='#555';x.textAlign='center';x.fillText('loss increase when dropped',ml+(W-ml)/2,Hh-7);
  countColours(c);c.classList.add('figure');
}
function drawPaths(){
  const p=D.prompts[S.prompt],t=p.importance,o=$('orders-chart'),tc=$('terms-chart');o.innerHTML='';tc.innerHTML='';
  $('paths-src').textContent='Patterns and LN scales: '+p.source_paths+'.';
  if(!t){$('paths-note').textContent='Term importance '+p.importance_note+'.';return;}
  const names=['direct','heads','virtual heads'];
  bars(o,'By path order',t.orders.map(q=>['order '+q[0]+(names[q[0]]?' '+names[q[0]]:'')+' ('+q[1]+')',q[2],'']),'orders-canvas');
  bars(tc,'Largest terms',t.terms.map(q=>[q[0],q[2],q[1]===null?'':'(order '+q[1]+')']),'terms-canvas');
  $('paths-note').textContent='Next-token loss on this prompt: all terms '+t.loss_all_terms.toFixed(4)+', biases only '+t.loss_biases_only.toFixed(4)+'; orders ≤ k kept: '+t.orders.map(q=>q[0]+': '+q[3].toFixed(4)).join(', ')+'.';
}
